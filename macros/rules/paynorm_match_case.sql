{#- CASE giving the id of the first active rule (priority desc, id) whose formats contain the row's
    payload_format and whose `match` filter is true; NULL when none. -#}
{% macro paynorm_match_case(rules, payload='payload', payload_format='payload_format') -%}
  {%- if rules | length == 0 -%}null::text
  {%- else -%}
    case
    {%- for r in rules %}
      when {{ payload_format }} in (
        {%- for f in r.formats %}{{ paynorm_sql_string(f) }}{{ ", " if not loop.last }}{% endfor -%}
      ) and jsonb_path_exists({{ payload }}, {{ paynorm_sql_string(r.rule.match) }}::jsonpath, '{}'::jsonb, true)
        then {{ paynorm_sql_string(r.id) }}
    {%- endfor %}
    end
  {%- endif -%}
{%- endmacro %}
