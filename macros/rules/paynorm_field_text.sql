{#- Final text value of a free-text field: cases, else map hit, else the raw value, else default. -#}
{% macro paynorm_field_text(spec, payload='payload', row_data='row_data') -%}
  {%- if spec is none -%}null::text
  {%- else -%}
    {%- set raw = paynorm_field_raw(spec, payload, row_data) -%}
    coalesce(
      {{ paynorm_field_cases(spec, payload) }},
      {{ paynorm_field_map(raw, spec) }},
      nullif(btrim({{ raw }}), ''),
      {{ paynorm_sql_string(spec.default if spec.default is defined else none) }}::text
    )
  {%- endif -%}
{%- endmacro %}
