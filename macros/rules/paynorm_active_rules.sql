{#- The ACTIVE mapping rules of paynorm.mappings, in match order (priority desc, id), read at
    execution time. Each item: {id, rule_hash, priority, formats, rule (the parsed document), origin, model}.
    At parse time (execute = false) the list is empty. -#}
{% macro paynorm_active_rules() -%}
  {%- set rules = [] -%}
  {%- if execute -%}
    {%- set q -%}
      select id, rule_hash, priority, array_to_json(formats)::text as formats, rule::text as rule,
             origin, model
      from {{ paynorm_schema_relation('mappings') }}
      where status = 'active'
      order by priority desc, id collate "C"
    {%- endset -%}
    {%- set res = run_query(q) -%}
    {%- for row in res.rows -%}
      {%- do rules.append({'id': row[0], 'rule_hash': row[1], 'priority': row[2],
                           'formats': fromjson(row[3]), 'rule': fromjson(row[4]),
                           'origin': row[5], 'model': row[6]}) -%}
    {%- endfor -%}
  {%- endif -%}
  {{ return(rules) }}
{%- endmacro %}
