{#- Case-insensitive, trimmed lookup of an expression in a field's `map`; NULL when unmapped. -#}
{% macro paynorm_field_map(expr, spec) -%}
  {%- set m = spec.map if (spec is not none and spec.map is defined and spec.map) else {} -%}
  {%- if m | length == 0 -%}null::text
  {%- else -%}
    case lower(btrim({{ expr }}))
    {%- for k, v in m.items() %}
      when {{ paynorm_sql_string(k | string | lower | trim) }} then {{ paynorm_sql_string(v) }}
    {%- endfor %}
    end
  {%- endif -%}
{%- endmacro %}
