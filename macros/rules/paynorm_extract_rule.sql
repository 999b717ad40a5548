{#- The values that turn a row matched by ONE rule into extracted canonical values (still text for
    what paynorm_convert converts with the seeds): a text array, one element per column of
    paynorm_extracted_columns (in that order, each commented with its column name), read from the
    current row `m` (staged columns plus mapping_id). paynorm_extract picks the array of the row's
    rule. This is the SQL `dbt compile` shows per rule. -#}
{% macro paynorm_extract_rule(r) -%}
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
  {%- set v = {} -%}
    {%- set x %}{{ paynorm_sql_string(r.id) }}::text{% endset %}{% do v.update({'mapping_id': x}) %}
    {%- set x %}{{ paynorm_sql_string(r.rule_hash) }}::text{% endset %}{% do v.update({'rule_hash': x}) %}
    {%- set x %}{{ paynorm_sql_string('llm' if r.origin == 'llm' else 'rule') }}::text{% endset %}{% do v.update({'normalizer': x}) %}
    {%- set x %}{{ paynorm_sql_string(r.model if r.origin == 'llm' else none) }}::text{% endset %}{% do v.update({'llm_model': x}) %}
    {%- set x %}{{ paynorm_provider_expr(r.rule.provider, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'provider': x}) %}
    {%- set x %}{{ paynorm_sql_string(r.rule.api if r.rule.api is defined else '*') }}::text{% endset %}{% do v.update({'api': x}) %}
    {%- set x %}{{ 'true' if (r.rule.provider.const is defined and r.rule.provider.const) else 'false' }}{% endset %}{% do v.update({'amount_provider_fixed': x}) %}
    {%- set x %}coalesce({{ paynorm_field_text(f.transaction_id if f.transaction_id is defined else none, 'm.payload', 'm.row_data') }}, m.row_transaction_id){% endset %}{% do v.update({'transaction_id': x}) %}
    {%- set x %}coalesce({{ paynorm_field_text(f.merchant_id if f.merchant_id is defined else none, 'm.payload', 'm.row_data') }}, m.row_merchant_id){% endset %}{% do v.update({'merchant_id': x}) %}
    {%- set x %}coalesce({{ paynorm_field_text(f.merchant_name if f.merchant_name is defined else none, 'm.payload', 'm.row_data') }}, m.row_merchant_name){% endset %}{% do v.update({'merchant_name': x}) %}
    {%- if mc is not none %}
    {%- set x %}coalesce({{ paynorm_field_text(mc, 'm.payload', 'm.row_data') }}, m.row_merchant_country){% endset %}{% do v.update({'merchant_country_text': x}) %}
    {%- set x %}{{ paynorm_sql_string(mc.country if mc.country is defined else 'auto') }}::text{% endset %}{% do v.update({'merchant_country_mode': x}) %}
    {%- else %}
    {%- set x %}m.row_merchant_country{% endset %}{% do v.update({'merchant_country_text': x}) %}
    {%- set x %}'auto'::text{% endset %}{% do v.update({'merchant_country_mode': x}) %}
    {%- endif %}
    {%- set x %}{{ paynorm_field_enum(et, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'event_type_mapped': x}) %}
    {%- set x %}{{ paynorm_sql_string(et.default if (et is not none and et.default is defined) else none) }}::text{% endset %}{% do v.update({'event_type_default': x}) %}
    {%- set x %}{{ paynorm_field_enum(status, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'status_mapped': x}) %}
    {%- set x %}nullif(btrim({{ paynorm_field_raw(status, 'm.payload', 'm.row_data') }}), ''){% endset %}{% do v.update({'status_token': x}) %}
    {%- set x %}{{ paynorm_sql_string(status.default if status.default is defined else none) }}::text{% endset %}{% do v.update({'status_default': x}) %}
    {%- set x %}{{ 'false' if (status.vocabulary is defined and status.vocabulary is sameas false) else 'true' }}{% endset %}{% do v.update({'status_use_vocabulary': x}) %}
    {%- if f.provider_status_raw is defined %}
    {%- set x %}{{ paynorm_field_text(f.provider_status_raw, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'provider_status_raw': x}) %}
    {%- else %}
    {%- set x %}nullif(btrim({{ paynorm_field_raw({'path': status.path} if status.path is defined else ({'row_path': status.row_path} if status.row_path is defined else none), 'm.payload', 'm.row_data') }}), ''){% endset %}{% do v.update({'provider_status_raw': x}) %}
    {%- endif %}
    {%- set x %}{{ paynorm_field_enum(dc, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'decline_category_mapped': x}) %}
    {%- if dc is not none and (dc.path is defined or dc.row_path is defined) %}
    {%- set x %}nullif(btrim({{ paynorm_field_raw(dc, 'm.payload', 'm.row_data') }}), ''){% endset %}{% do v.update({'decline_code': x}) %}
    {%- else %}
    {%- set x %}null::text{% endset %}{% do v.update({'decline_code': x}) %}
    {%- endif %}
    {%- set x %}{{ paynorm_sql_string(dc.default if (dc is not none and dc.default is defined) else none) }}::text{% endset %}{% do v.update({'decline_category_default': x}) %}
    {%- set x %}{{ paynorm_field_text(f.response_code_raw if f.response_code_raw is defined else none, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'response_code_raw': x}) %}
    {%- set x %}{{ paynorm_field_text(f.error_message if f.error_message is defined else none, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'error_message': x}) %}
    {%- set x %}lower({{ paynorm_field_text(f.payment_method if f.payment_method is defined else none, 'm.payload', 'm.row_data') }}){% endset %}{% do v.update({'payment_method': x}) %}
    {%- set x %}lower({{ paynorm_field_text(f.card_network if f.card_network is defined else none, 'm.payload', 'm.row_data') }}){% endset %}{% do v.update({'card_network': x}) %}
    {%- if amount is not none %}
    {%- set x %}{{ paynorm_field_raw(amount, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'amount_text': x}) %}
    {%- set x %}{{ paynorm_sql_string(amount.unit) }}::text{% endset %}{% do v.update({'amount_unit': x}) %}
    {%- set x %}{{ 'true' if amount.decimal_comma is defined and amount.decimal_comma else 'false' }}{% endset %}{% do v.update({'amount_decimal_comma': x}) %}
    {%- set x %}{{ 'true' if amount.absolute is defined and amount.absolute else 'false' }}{% endset %}{% do v.update({'amount_absolute': x}) %}
    {%- set x %}{% if amount.exponent_path is defined %}{{ paynorm_json_value('m.payload', amount.exponent_path) }}{% else %}null::text{% endif %}{% endset %}{% do v.update({'amount_exponent_text': x}) %}
    {%- else %}
    {%- set x %}null::text{% endset %}{% do v.update({'amount_text': x}) %}
    {%- set x %}null::text{% endset %}{% do v.update({'amount_unit': x}) %}
    {%- set x %}false{% endset %}{% do v.update({'amount_decimal_comma': x}) %}
    {%- set x %}false{% endset %}{% do v.update({'amount_absolute': x}) %}
    {%- set x %}null::text{% endset %}{% do v.update({'amount_exponent_text': x}) %}
    {%- endif %}
    {%- set x %}{{ paynorm_field_text(f.currency if f.currency is defined else none, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'currency_text': x}) %}
    {%- set x %}{{ paynorm_field_text(ic, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'issuer_country_text': x}) %}
    {%- set x %}{{ paynorm_sql_string(ic.country if (ic is not none and ic.country is defined) else 'auto') }}::text{% endset %}{% do v.update({'issuer_country_mode': x}) %}
    {%- set x %}{{ paynorm_field_raw(lat, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'latency_text': x}) %}
    {%- set x %}{{ paynorm_sql_string(lat.unit if (lat is not none and lat.unit is defined) else 'ms') }}::text{% endset %}{% do v.update({'latency_unit': x}) %}
    {%- set x %}{{ paynorm_field_raw(ev, 'm.payload', 'm.row_data') }}{% endset %}{% do v.update({'event_at_text': x}) %}
    {%- set x %}{{ paynorm_sql_string(ev.format if (ev is not none and ev.format is defined) else 'iso') }}::text{% endset %}{% do v.update({'event_at_format': x}) %}
    {%- if is_test is not none %}
    {%- set x %}coalesce({{ paynorm_field_cases(is_test, 'm.payload') }}, {{ paynorm_field_raw(is_test, 'm.payload', 'm.row_data') }}){% endset %}{% do v.update({'is_test_text': x}) %}
    {%- set x %}{{ 'true' if is_test.negate is defined and is_test.negate else 'false' }}{% endset %}{% do v.update({'is_test_negate': x}) %}
    {%- set x %}{{ paynorm_sql_string(is_test.default if is_test.default is defined else none) }}::boolean{% endset %}{% do v.update({'is_test_default': x}) %}
    {%- else %}
    {%- set x %}null::text{% endset %}{% do v.update({'is_test_text': x}) %}
    {%- set x %}false{% endset %}{% do v.update({'is_test_negate': x}) %}
    {%- set x %}null::boolean{% endset %}{% do v.update({'is_test_default': x}) %}
    {%- endif %}
  -- rule {{ r.id }} (priority {{ r.priority }}, hash {{ r.rule_hash }})
  array[
  {%- for c in paynorm_extracted_columns() %}
    {%- if v[c.name] is not defined -%}
      {{ exceptions.raise_compiler_error("paynorm_extract_rule: no value for column " ~ c.name) }}
    {%- endif %}
    ({{ v[c.name] }})::text{{ ',' if not loop.last }}  -- {{ c.name }}
  {%- endfor %}
  ]
{%- endmacro %}
