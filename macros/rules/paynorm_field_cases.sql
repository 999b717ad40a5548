{#- CASE over a field's `cases` ([{when: <path filter>, value}]), NULL when none applies. -#}
{% macro paynorm_field_cases(spec, payload='payload') -%}
  {%- set cases = spec.cases if (spec is not none and spec.cases is defined and spec.cases) else [] -%}
  {%- if cases | length == 0 -%}null::text
  {%- else -%}
    case
    {%- for c in cases %}
      when jsonb_path_exists({{ payload }}, {{ paynorm_sql_string(c.when) }}::jsonpath, '{}'::jsonb, true)
        then {{ paynorm_sql_string(c.value) }}
    {%- endfor %}
    end
  {%- endif -%}
{%- endmacro %}
