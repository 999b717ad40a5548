{#- The value of the lake column `key` (a Python string) in a landed row image, as jsonb: the landing
    keeps the columns in `row_columns` (its row_data), except the payload column when `payload_key`
    names it, whose value is then the decoded `payload` itself (see consumer/sql/warehouse.sql). -#}
{% macro paynorm_row_value(row_columns, payload_key, payload, key) -%}
  {%- if row_columns is not string or payload_key is not string or payload is not string
        or not row_columns or not payload_key or not payload -%}
    {{ exceptions.raise_compiler_error("paynorm_row_value: row_columns, payload_key and payload must be SQL expressions") }}
  {%- endif -%}
  {%- if key is not string -%}
    {{ exceptions.raise_compiler_error("paynorm_row_value: key must be a string, got " ~ key) }}
  {%- endif -%}
  case when {{ payload_key }} = {{ paynorm_sql_string(key) }} then {{ payload }}
       else {{ row_columns }} -> {{ paynorm_sql_string(key) }} end
{%- endmacro %}
