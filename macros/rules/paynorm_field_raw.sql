{#- The raw text of a rule field: path (payload) | row_path (lake row image) | const, then regex.
    NULL when the spec has none of them (cases-only fields). -#}
{% macro paynorm_field_raw(spec, payload='payload', row_data='row_data') -%}
  {%- if spec is none -%}null::text
  {%- else -%}
    {%- if spec.path is defined and spec.path is not none -%}
      {%- set expr = paynorm_json_value(payload, spec.path) -%}
    {%- elif spec.row_path is defined and spec.row_path is not none -%}
      {%- set expr = paynorm_json_value(row_data, spec.row_path) -%}
    {%- elif spec.const is defined and spec.const is not none -%}
      {%- set expr = paynorm_sql_string(spec.const) ~ '::text' -%}
    {%- else -%}
      {%- set expr = 'null::text' -%}
    {%- endif -%}
    {%- if spec.regex is defined and spec.regex -%}
      substring({{ expr }} from {{ paynorm_sql_string(spec.regex) }})
    {%- else -%}
      {{ expr }}
    {%- endif -%}
  {%- endif -%}
{%- endmacro %}
