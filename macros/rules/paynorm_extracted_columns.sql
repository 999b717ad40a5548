{#- The columns paynorm_extract yields per matched row (after lake_key, load_seq), in order, with
    their SQL types: paynorm_extract_rule builds one text array of them per rule, in this order. -#}
{% macro paynorm_extracted_columns() -%}
  {%- set text_cols = ['mapping_id', 'rule_hash', 'normalizer', 'llm_model', 'provider', 'transaction_id',
                       'merchant_id', 'merchant_name', 'merchant_country_text', 'merchant_country_mode',
                       'event_type_mapped', 'event_type_default', 'status_mapped', 'status_token',
                       'status_default', 'api'] -%}
  {%- set cols = [] -%}
  {%- for c in text_cols -%}{%- do cols.append({'name': c, 'type': 'text'}) -%}{%- endfor -%}
  {%- do cols.append({'name': 'status_use_vocabulary', 'type': 'boolean'}) -%}
  {%- for c in ['provider_status_raw', 'decline_category_mapped', 'decline_code', 'decline_category_default',
                'response_code_raw', 'error_message', 'payment_method', 'card_network', 'amount_text',
                'amount_unit'] -%}
    {%- do cols.append({'name': c, 'type': 'text'}) -%}
  {%- endfor -%}
  {%- do cols.append({'name': 'amount_decimal_comma', 'type': 'boolean'}) -%}
  {%- do cols.append({'name': 'amount_absolute', 'type': 'boolean'}) -%}
  {%- do cols.append({'name': 'amount_provider_fixed', 'type': 'boolean'}) -%}
  {%- for c in ['amount_exponent_text', 'currency_text', 'issuer_country_text', 'issuer_country_mode',
                'latency_text', 'latency_unit', 'event_at_text', 'event_at_format', 'is_test_text'] -%}
    {%- do cols.append({'name': c, 'type': 'text'}) -%}
  {%- endfor -%}
  {%- do cols.append({'name': 'is_test_negate', 'type': 'boolean'}) -%}
  {%- do cols.append({'name': 'is_test_default', 'type': 'boolean'}) -%}
  {{ return(cols) }}
{%- endmacro %}
