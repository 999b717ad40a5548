{#- Generic conversions of extracted rows (relation = output of paynorm_extract, or a mock of it):
    amount units and exponents (the provider's amount convention, then ISO 4217), currency
    alpha/numeric, country alpha-2/alpha-3/numeric, status / card network / payment method
    vocabularies, decline-code seed, timestamps, string booleans, latency. Adds `invalid_reason`
    (unmapped_status | bad_amount | unknown_currency), `amount_withheld_reason` (no_currency |
    unit_unverified | unit_conflict: the event lands, its amount is not read) and `outcome`
    (event | quarantine). Money stays numeric: no float anywhere. `passthrough`: columns of
    `relation` carried along unchanged at the end.
    Each step below ends with `offset null`, a planner fence: without it PostgreSQL pulls the steps up
    into one SELECT and substitutes every column by its defining expression wherever it is used, so
    e.g. the amount regexes ran dozens of times per row (amount_num -> amount_value -> minor_value ->
    invalid_reason -> amount_minor / amount / outcome). With the fences each value is computed once.
    NULL rather than the usual 0: PostgreSQL (15) reads `offset 0` as a cast of 0 to bigint, i.e. an
    offset it cannot see is zero, and keeps such a subquery out of parallel plans; `offset null` is
    the same fence and lets a build run in parallel workers (one seq scan per process otherwise).
    The code tables are `not materialized` for the same reason: a CTE read twice is materialized,
    and a materialized CTE can only be read by the leader. -#}
{% macro paynorm_convert(relation, passthrough=[]) -%}
  {%- if passthrough is string -%}
    {{ exceptions.raise_compiler_error("paynorm_convert: passthrough must be a list of column names") }}
  {%- endif -%}
with to_convert as (
    select * from {{ relation }}
),

currency_codes as not materialized (
    select currency as code, 'alpha' as kind, currency, exponent from {{ ref('currencies') }}
    union all
    select numeric_code, 'numeric', currency, exponent from {{ ref('currencies') }}
    where numeric_code is not null
),

country_codes as not materialized (
    select alpha2 as code, 'alpha2' as kind, alpha2 from {{ ref('countries') }}
    union all
    select alpha3, 'alpha3', alpha2 from {{ ref('countries') }}
    union all
    select numeric_code, 'numeric', alpha2 from {{ ref('countries') }}
),

prepared as (
    select
        e.*,
        case
            when e.amount_text is null then null
            when e.amount_decimal_comma
                then replace(regexp_replace(btrim(e.amount_text), '[[:space:].'']', '', 'g'), ',', '.')
            else regexp_replace(btrim(e.amount_text), '^\+', '')
        end as amount_clean,
        case
            when btrim(e.currency_text) ~ '^[0-9]{1,3}$' then lpad(btrim(e.currency_text), 3, '0')
            else upper(btrim(e.currency_text))
        end as currency_key,
        case
            when btrim(e.issuer_country_text) ~ '^[0-9]{1,3}$' then lpad(btrim(e.issuer_country_text), 3, '0')
            else upper(btrim(e.issuer_country_text))
        end as issuer_country_key,
        case
            when btrim(e.merchant_country_text) ~ '^[0-9]{1,3}$' then lpad(btrim(e.merchant_country_text), 3, '0')
            else upper(btrim(e.merchant_country_text))
        end as merchant_country_key,
        lower(btrim(e.status_token)) as status_key,
        nullif(btrim(regexp_replace(lower(btrim(e.card_network)), '[^a-z0-9]+', '_', 'g'), '_'), '') as card_network_key,
        nullif(btrim(regexp_replace(lower(btrim(e.payment_method)), '[^a-z0-9]+', '_', 'g'), '_'), '') as payment_method_key,
        coalesce(e.decline_code, e.response_code_raw) as decline_lookup_code,
        lower(btrim(e.is_test_text)) as is_test_key,
        btrim(e.event_at_text) as event_at_clean,
        btrim(e.latency_text) as latency_clean
    from to_convert as e
    offset null
),

looked_up as (
    select
        p.*,
        cur.currency as currency_iso,
        cur.exponent as iso_exponent,
        coalesce(pce_api.exponent, pce.exponent) as provider_exponent,
        coalesce(conv_api.unit, conv.unit) as convention_unit,
        coalesce(cnp.card_network, cng.card_network) as card_network_vocabulary,
        coalesce(pmp.payment_method, pmg.payment_method) as payment_method_vocabulary,
        ic.alpha2 as issuer_country_iso,
        mc.alpha2 as merchant_country_iso,
        coalesce(svp.status, svg.status) as status_vocabulary,
        coalesce(dcp.decline_category, dci.decline_category) as decline_category_seed,
        case when p.amount_clean ~ '^-?[0-9]{1,24}(\.[0-9]{1,12})?$' then p.amount_clean::numeric end as amount_num,
        case when btrim(p.amount_exponent_text) ~ '^[0-9]$' then btrim(p.amount_exponent_text)::integer end
            as payload_exponent
    from prepared as p
    left join currency_codes as cur
        on cur.code = p.currency_key
    left join {{ ref('provider_amount_conventions') }} as pce
        on pce.provider = p.provider and pce.api = '*' and pce.currency = cur.currency
    left join {{ ref('provider_amount_conventions') }} as pce_api
        on pce_api.provider = p.provider and pce_api.api = p.api and p.api <> '*' and pce_api.currency = cur.currency
    left join {{ ref('provider_amount_conventions') }} as conv
        on p.amount_provider_fixed and conv.provider = p.provider and conv.api = '*' and conv.currency = '*'
    left join {{ ref('provider_amount_conventions') }} as conv_api
        on p.amount_provider_fixed and conv_api.provider = p.provider and conv_api.api = p.api and p.api <> '*'
        and conv_api.currency = '*'
    left join {{ ref('card_networks') }} as cnp
        on cnp.provider = p.provider and cnp.token = p.card_network_key
    left join {{ ref('card_networks') }} as cng
        on cng.provider = '*' and cng.token = p.card_network_key
    left join {{ ref('payment_methods') }} as pmp
        on pmp.provider = p.provider and pmp.token = p.payment_method_key
    left join {{ ref('payment_methods') }} as pmg
        on pmg.provider = '*' and pmg.token = p.payment_method_key
    left join country_codes as ic
        on ic.code = p.issuer_country_key
        and (p.issuer_country_mode = 'auto' or ic.kind = p.issuer_country_mode)
    left join country_codes as mc
        on mc.code = p.merchant_country_key
        and (p.merchant_country_mode = 'auto' or mc.kind = p.merchant_country_mode)
    left join {{ ref('status_vocabulary') }} as svp
        on p.status_use_vocabulary and svp.provider = p.provider and svp.token = p.status_key
    left join {{ ref('status_vocabulary') }} as svg
        on p.status_use_vocabulary and svg.provider = '*' and svg.token = p.status_key
    left join {{ ref('decline_codes') }} as dcp
        on dcp.provider = p.provider and dcp.code = p.decline_lookup_code
    left join {{ ref('decline_codes') }} as dci
        on dci.provider = 'iso8583' and dci.code = p.decline_lookup_code
    offset null
),

amounts as (
    select
        l.*,
        case when l.amount_absolute then abs(l.amount_num) else l.amount_num end as amount_value,
        case
            when l.amount_unit = 'minor' then coalesce(l.payload_exponent, l.provider_exponent, l.iso_exponent)
        end as source_exponent
    from looked_up as l
    offset null
),

minor_units as (
    select
        a.*,
        case
            when a.amount_value is null or a.iso_exponent is null then null
            when a.amount_unit = 'major' then a.amount_value * power(10::numeric, a.iso_exponent)
            when a.amount_unit = 'minor' and a.source_exponent is not null
                then a.amount_value * power(10::numeric, a.iso_exponent - a.source_exponent)
        end as minor_value
    from amounts as a
    offset null
),

withheld as (
    select
        m.*,
        -- an amount is only read under a convention known for certain (mappings/README.md, "Money")
        case
            when m.amount_num is null then null
            when m.convention_unit is not null and m.convention_unit <> m.amount_unit then 'unit_conflict'
            when m.convention_unit is null and (m.amount_unit <> 'major' or m.amount_clean !~ '\.')
                then 'unit_unverified'
            when m.amount_unit = 'minor' and m.currency_iso is null then 'no_currency'
        end as amount_withheld_reason
    from minor_units as m
    offset null
),

resolved as (
    select
        m.*,
        coalesce(m.status_mapped, m.status_vocabulary, m.status_default) as status_resolved,
        case
            when coalesce(m.status_mapped, m.status_vocabulary, m.status_default) is null then 'unmapped_status'
            when m.amount_text is not null and m.amount_num is null then 'bad_amount'
            when m.amount_num < 0 and not m.amount_absolute then 'bad_amount'
            when m.amount_unit = 'minor' and m.amount_exponent_text is not null and m.payload_exponent is null
                then 'bad_amount'
            when nullif(btrim(m.currency_text), '') is not null and (m.currency_iso is null or m.iso_exponent is null)
                then 'unknown_currency'
            when m.amount_withheld_reason is null and m.minor_value is not null
                and (m.minor_value <> trunc(m.minor_value) or abs(m.minor_value) >= 1e17)
                then 'bad_amount'
        end as invalid_reason
    from withheld as m
    offset null
)

select
    r.lake_key,
    r.load_seq,
    r.mapping_id,
    r.rule_hash,
    r.normalizer,
    r.llm_model,
    r.provider,
    r.transaction_id,
    r.merchant_id,
    r.merchant_name,
    r.merchant_country_iso as merchant_country,
    coalesce(r.event_type_mapped, r.event_type_default, 'unknown') as event_type,
    r.status_resolved as status,
    r.provider_status_raw,
    case
        when r.status_resolved in ('declined', 'error')
            then coalesce(r.decline_category_mapped, r.decline_category_seed, r.decline_category_default, 'other')
    end as decline_category,
    r.response_code_raw,
    r.error_message,
    case when r.invalid_reason is null and r.amount_withheld_reason is null then r.minor_value::bigint end
        as amount_minor,
    r.currency_iso as currency,
    r.iso_exponent as currency_exponent,
    case
        when r.invalid_reason is not null or r.amount_withheld_reason is not null then null
        when r.minor_value is not null then round(r.minor_value / power(10::numeric, r.iso_exponent), r.iso_exponent)
        when r.amount_unit = 'major' then r.amount_value
    end as amount,
    r.amount_text as amount_raw,
    case when r.invalid_reason is null then r.amount_withheld_reason end as amount_withheld_reason,
    case when r.payment_method_key is not null then coalesce(r.payment_method_vocabulary, 'other') end
        as payment_method,
    case when r.card_network_key is not null then coalesce(r.card_network_vocabulary, 'other') end
        as card_network,
    r.issuer_country_iso as issuer_country,
    case
        when r.latency_clean ~ '^[0-9]{1,9}(\.[0-9]{1,6})?$'
            then round(r.latency_clean::numeric * case when r.latency_unit = 's' then 1000 else 1 end)::bigint
    end as latency_ms,
    case r.event_at_format
        when 'iso' then {{ adapter.quote(var('paynorm_schema')) }}.try_timestamptz(r.event_at_clean)
        when 'epoch_s' then
            case when r.event_at_clean ~ '^[0-9]{1,11}(\.[0-9]{1,6})?$'
                then timestamptz '1970-01-01 00:00:00+00' + (r.event_at_clean || ' seconds')::interval end
        when 'epoch_ms' then
            case when r.event_at_clean ~ '^[0-9]{1,14}(\.[0-9]{1,3})?$'
                then timestamptz '1970-01-01 00:00:00+00' + (r.event_at_clean || ' milliseconds')::interval end
    end as event_at_parsed,
    coalesce(
        case
            when r.is_test_key in ('true', '1', 'yes', 'y', 't') then not r.is_test_negate
            when r.is_test_key in ('false', '0', 'no', 'n', 'f') then r.is_test_negate
        end,
        r.is_test_default,
        false
    ) as is_test,
    r.invalid_reason,
    case when r.invalid_reason is null then 'event' else 'quarantine' end as outcome
    {%- for c in passthrough %},
    r.{{ adapter.quote(c) }}
    {%- endfor %}
from resolved as r
{%- endmacro %}
