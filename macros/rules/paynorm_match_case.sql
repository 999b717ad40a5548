{#- CASE giving the id of the first active rule (priority desc, id) whose formats contain the row's
    payload_format, whose `match` filter is true on the payload and, when the rule has one, whose
    `row_match` filter is true on the lake row image; NULL when none. -#}
{% macro paynorm_match_case(rules, payload='payload', payload_format='payload_format', row_data='row_data') -%}
  {%- if rules | length == 0 -%}null::text
  {%- else -%}
    case
    {%- for r in rules %}
      when {{ payload_format }} in (
        {%- for f in r.formats %}{{ paynorm_sql_string(f) }}{{ ", " if not loop.last }}{% endfor -%}
      ) and jsonb_path_exists({{ payload }}, {{ paynorm_sql_string(r.rule.match) }}::jsonpath, '{}'::jsonb, true)
      {%- if r.rule.row_match is defined and r.rule.row_match %}
        and jsonb_path_exists({{ row_data }}, {{ paynorm_sql_string(r.rule.row_match) }}::jsonpath, '{}'::jsonb, true)
      {%- endif %}
        then {{ paynorm_sql_string(r.id) }}
    {%- endfor %}
    end
  {%- endif -%}
{%- endmacro %}
