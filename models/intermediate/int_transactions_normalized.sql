{{
    config(
        materialized='incremental',
        unique_key='lake_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['lake_key'], 'unique': True},
            {'columns': ['normalized_at']},
            {'columns': ['outcome', 'ruleset_hash']},
            {'columns': ['mapping_id', 'rule_hash']},
            {'columns': ['load_seq']},
        ],
    )
}}

{#- One row per landed lake row with its outcome: event | quarantine | pending | deleted.
    Incremental: only new/changed landing rows (load_seq) and the rows paynorm_reprocess_keys
    selects are normalized again; everything else is left untouched. -#}
{%- set rules = paynorm_active_rules() -%}
{%- set ruleset_hash = paynorm_ruleset_hash(rules) -%}
{%- set watermark = none -%}
{%- if execute and is_incremental() -%}
    {%- set watermark = run_query("select coalesce(max(load_seq), 0) from " ~ this).columns[0].values()[0] -%}
{%- endif %}

with

staged_all as (

    select * from {{ ref('stg_lake__transactions') }}

),

candidate_keys as (

    {% if is_incremental() -%}
    -- new and changed landing rows
    select lake_key from staged_all where load_seq > {{ watermark }}
    union
    -- rows of an older load_seq that became visible after the last run (late commits)
    select s.lake_key from staged_all as s
    where s.load_seq > {{ watermark }} - {{ var('late_arrival_lookback') }} and s.load_seq <= {{ watermark }}
      and not exists (select 1 from {{ this }} as t where t.lake_key = s.lake_key and t.load_seq = s.load_seq)
    union
    {{ paynorm_reprocess_keys(this, rules, ruleset_hash) }}
    {%- else -%}
    select lake_key from staged_all
    {%- endif %}

),

staged as (

    select s.* from staged_all as s
    inner join candidate_keys as k on k.lake_key = s.lake_key

),

matched as (

    {{ paynorm_match_rows('staged', rules) }}

),

extracted as (

    {{ paynorm_extract('matched', rules) }}

),

converted as (

    {{ paynorm_convert('extracted') }}

),

unmatched as (

    {{ paynorm_classify_unmatched('matched') }}

),

normalized as (

    select
        s.lake_key, s.load_seq, c.outcome, c.invalid_reason as reason,
        c.mapping_id, c.rule_hash, null::text as llm_shape_status, c.normalizer, c.llm_model,
        c.provider, c.transaction_id, c.merchant_id, c.merchant_name, c.merchant_country,
        c.event_type, c.status, c.provider_status_raw, c.decline_category, c.response_code_raw,
        c.error_message, c.amount_minor, c.currency, c.currency_exponent, c.amount, c.amount_raw,
        c.payment_method, c.card_network, c.issuer_country, c.latency_ms,
        coalesce(c.event_at_parsed, s.row_created_at, s.committed_at) as event_at,
        c.is_test
    from converted as c
    inner join staged as s on s.lake_key = c.lake_key

    union all

    select
        u.lake_key, u.load_seq, u.outcome, u.reason,
        null, null, u.llm_shape_status, null, null,
        null, null, null, null, null,
        null, null, null, null, null,
        null, null, null, null, null, null,
        null, null, null, null,
        null,
        null
    from unmatched as u

    union all

    select
        s.lake_key, s.load_seq, 'deleted', null,
        null, null, null, null, null,
        null, null, null, null, null,
        null, null, null, null, null,
        null, null, null, null, null, null,
        null, null, null, null,
        null,
        null
    from staged as s
    where s.is_deleted

),

final as (

    select
        n.*,
        s.payload_format as source_format,
        s.shape_key,
        s.lake_lsn,
        s.committed_at,
        s.loaded_at as ingested_at,
        left(coalesce(s.payload::text, s.raw_payload::text, ''), {{ var('payload_excerpt_chars') }}) as payload_excerpt,
        {{ paynorm_sql_string(ruleset_hash) }}::text as ruleset_hash,
        now() as normalized_at
    from normalized as n
    inner join staged as s on s.lake_key = n.lake_key

)

select * from final
