{#- Mapped value of an enum field (status, event_type, decline_category): cases, then map, then
    the constant; NULL when none applies (fallbacks are applied by paynorm_convert). -#}
{% macro paynorm_field_enum(spec, payload='payload', row_data='row_data') -%}
  {%- if spec is none -%}null::text
  {%- else -%}
    {%- set raw = paynorm_field_raw(spec, payload, row_data) -%}
    coalesce(
      {{ paynorm_field_cases(spec, payload) }},
      {{ paynorm_field_map(raw, spec) }}
      {%- if spec.const is defined and spec.const is not none %}, {{ paynorm_sql_string(spec.const) }}{% endif %}
    )
  {%- endif -%}
{%- endmacro %}
