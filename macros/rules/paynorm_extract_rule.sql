{#- The SELECT list that turns rows matched by ONE rule into extracted canonical values (still text
    for what paynorm_convert converts with the seeds). `relation` has the staged columns plus
    mapping_id. This is the SQL `dbt compile` shows per rule. -#}
{% macro paynorm_extract_rule(r, relation) -%}
  {%- set f = r.rule.fields -%}
  {%- set none_spec = none -%}
  {%- set amount = f.amount if f.amount is defined else none -%}
  {%- set status = f.status -%}
  {%- set is_test = f.is_test if f.is_test is defined else none -%}
  {%- set dc = f.decline_category if f.decline_category is defined else none -%}
  {#- A decline_category without its own path maps the response code (mappings/README.md). -#}
  {%- if dc is not none and dc.path is not defined and dc.row_path is not defined and f.response_code_raw is defined -%}
    {%- set dc_eff = {} -%}
    {%- do dc_eff.update(dc) -%}
    {%- for k in ['path', 'row_path', 'regex'] -%}
      {%- if f.response_code_raw[k] is defined -%}{%- do dc_eff.update({k: f.response_code_raw[k]}) -%}{%- endif -%}
    {%- endfor -%}
    {%- set dc = dc_eff -%}
  {%- endif -%}
  {%- set ic = f.issuer_country if f.issuer_country is defined else none -%}
  {%- set mc = f.merchant_country if f.merchant_country is defined else none -%}
  {%- set lat = f.latency_ms if f.latency_ms is defined else none -%}
  {%- set ev = f.event_at if f.event_at is defined else none -%}
  {%- set et = f.event_type if f.event_type is defined else none -%}
  -- rule {{ r.id }} (priority {{ r.priority }}, hash {{ r.rule_hash }})
  select
    m.lake_key,
    m.load_seq,
    {{ paynorm_sql_string(r.id) }}::text as mapping_id,
    {{ paynorm_sql_string(r.rule_hash) }}::text as rule_hash,
    {{ paynorm_sql_string('llm' if r.origin == 'llm' else 'rule') }}::text as normalizer,
    {{ paynorm_sql_string(r.model if r.origin == 'llm' else none) }}::text as llm_model,
    {{ paynorm_provider_expr(r.rule.provider, 'm.payload', 'm.row_data') }} as provider,
    coalesce({{ paynorm_field_text(f.transaction_id if f.transaction_id is defined else none, 'm.payload', 'm.row_data') }}, m.row_transaction_id) as transaction_id,
    coalesce({{ paynorm_field_text(f.merchant_id if f.merchant_id is defined else none, 'm.payload', 'm.row_data') }}, m.row_merchant_id) as merchant_id,
    coalesce({{ paynorm_field_text(f.merchant_name if f.merchant_name is defined else none, 'm.payload', 'm.row_data') }}, m.row_merchant_name) as merchant_name,
    {%- if mc is not none %}
    coalesce({{ paynorm_field_text(mc, 'm.payload', 'm.row_data') }}, m.row_merchant_country) as merchant_country_text,
    {{ paynorm_sql_string(mc.country if mc.country is defined else 'auto') }}::text as merchant_country_mode,
    {%- else %}
    m.row_merchant_country as merchant_country_text,
    'auto'::text as merchant_country_mode,
    {%- endif %}
    {{ paynorm_field_enum(et, 'm.payload', 'm.row_data') }} as event_type_mapped,
    {{ paynorm_sql_string(et.default if (et is not none and et.default is defined) else none) }}::text as event_type_default,
    {{ paynorm_field_enum(status, 'm.payload', 'm.row_data') }} as status_mapped,
    nullif(btrim({{ paynorm_field_raw(status, 'm.payload', 'm.row_data') }}), '') as status_token,
    {{ paynorm_sql_string(status.default if status.default is defined else none) }}::text as status_default,
    {{ 'false' if (status.vocabulary is defined and status.vocabulary is sameas false) else 'true' }} as status_use_vocabulary,
    {%- if f.provider_status_raw is defined %}
    {{ paynorm_field_text(f.provider_status_raw, 'm.payload', 'm.row_data') }} as provider_status_raw,
    {%- else %}
    nullif(btrim({{ paynorm_field_raw({'path': status.path} if status.path is defined else ({'row_path': status.row_path} if status.row_path is defined else none), 'm.payload', 'm.row_data') }}), '') as provider_status_raw,
    {%- endif %}
    {{ paynorm_field_enum(dc, 'm.payload', 'm.row_data') }} as decline_category_mapped,
    {%- if dc is not none and (dc.path is defined or dc.row_path is defined) %}
    nullif(btrim({{ paynorm_field_raw(dc, 'm.payload', 'm.row_data') }}), '') as decline_code,
    {%- else %}
    null::text as decline_code,
    {%- endif %}
    {{ paynorm_sql_string(dc.default if (dc is not none and dc.default is defined) else none) }}::text as decline_category_default,
    {{ paynorm_field_text(f.response_code_raw if f.response_code_raw is defined else none, 'm.payload', 'm.row_data') }} as response_code_raw,
    {{ paynorm_field_text(f.error_message if f.error_message is defined else none, 'm.payload', 'm.row_data') }} as error_message,
    lower({{ paynorm_field_text(f.payment_method if f.payment_method is defined else none, 'm.payload', 'm.row_data') }}) as payment_method,
    lower({{ paynorm_field_text(f.card_network if f.card_network is defined else none, 'm.payload', 'm.row_data') }}) as card_network,
    {%- if amount is not none %}
    {{ paynorm_field_raw(amount, 'm.payload', 'm.row_data') }} as amount_text,
    {{ paynorm_sql_string(amount.unit) }}::text as amount_unit,
    {{ 'true' if amount.decimal_comma is defined and amount.decimal_comma else 'false' }} as amount_decimal_comma,
    {{ 'true' if amount.absolute is defined and amount.absolute else 'false' }} as amount_absolute,
    {% if amount.exponent_path is defined %}{{ paynorm_json_value('m.payload', amount.exponent_path) }}{% else %}null::text{% endif %} as amount_exponent_text,
    {%- else %}
    null::text as amount_text,
    null::text as amount_unit,
    false as amount_decimal_comma,
    false as amount_absolute,
    null::text as amount_exponent_text,
    {%- endif %}
    {{ paynorm_field_text(f.currency if f.currency is defined else none, 'm.payload', 'm.row_data') }} as currency_text,
    {{ paynorm_field_text(ic, 'm.payload', 'm.row_data') }} as issuer_country_text,
    {{ paynorm_sql_string(ic.country if (ic is not none and ic.country is defined) else 'auto') }}::text as issuer_country_mode,
    {{ paynorm_field_raw(lat, 'm.payload', 'm.row_data') }} as latency_text,
    {{ paynorm_sql_string(lat.unit if (lat is not none and lat.unit is defined) else 'ms') }}::text as latency_unit,
    {{ paynorm_field_raw(ev, 'm.payload', 'm.row_data') }} as event_at_text,
    {{ paynorm_sql_string(ev.format if (ev is not none and ev.format is defined) else 'iso') }}::text as event_at_format,
    {%- if is_test is not none %}
    coalesce({{ paynorm_field_cases(is_test, 'm.payload') }}, {{ paynorm_field_raw(is_test, 'm.payload', 'm.row_data') }}) as is_test_text,
    {{ 'true' if is_test.negate is defined and is_test.negate else 'false' }} as is_test_negate,
    {{ paynorm_sql_string(is_test.default if is_test.default is defined else none) }}::boolean as is_test_default
    {%- else %}
    null::text as is_test_text,
    false as is_test_negate,
    null::boolean as is_test_default
    {%- endif %}
  from {{ relation }} as m
  where m.mapping_id = {{ paynorm_sql_string(r.id) }}
{%- endmacro %}
