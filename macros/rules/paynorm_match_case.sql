{#- CASE giving the id of the first active rule (priority desc, id) whose formats contain the row's
    payload_format, whose `match` filter is true on the payload and, when the rule has one, whose
    `row_match` filter is true on the lake row image; NULL when none.
    One inner CASE per payload format, holding only the rules of that format in the same order: a
    row tests the filters of its own format's rules, instead of a format test per rule of every
    format. -#}
{% macro paynorm_match_case(rules, payload='payload', payload_format='payload_format', row_data='row_data') -%}
  {%- if rules | length == 0 -%}null::text
  {%- else -%}
    {%- set formats = [] -%}
    {%- for r in rules -%}
      {%- for f in r.formats -%}
        {%- if f is not string -%}
          {{ exceptions.raise_compiler_error("paynorm_match_case: rule " ~ r.id ~ " has a format that is not a string: " ~ f) }}
        {%- endif -%}
        {%- if f not in formats -%}{%- do formats.append(f) -%}{%- endif -%}
      {%- endfor -%}
    {%- endfor %}
    case {{ payload_format }}
    {%- for f in formats | sort %}
    when {{ paynorm_sql_string(f) }} then
      case
      {%- for r in rules if f in r.formats %}
        when jsonb_path_exists({{ payload }}, {{ paynorm_sql_string(r.rule.match) }}::jsonpath, '{}'::jsonb, true)
        {%- if r.rule.row_match is defined and r.rule.row_match %}
          and jsonb_path_exists({{ row_data }}, {{ paynorm_sql_string(r.rule.row_match) }}::jsonpath, '{}'::jsonb, true)
        {%- endif %}
          then {{ paynorm_sql_string(r.id) }}
      {%- endfor %}
      end
    {%- endfor %}
    end
  {%- endif -%}
{%- endmacro %}
