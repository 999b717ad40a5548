{#- Extracted values of every row of `relation` (staged columns + mapping_id) that an active rule
    matched: one UNION ALL branch per rule. With no active rule, an empty relation of the same
    columns. -#}
{% macro paynorm_extract(relation, rules) -%}
  {%- if rules | length == 0 -%}
    {{ paynorm_extract_rule({'id': 'none', 'rule_hash': 'none', 'priority': 0,
                             'rule': {'provider': {'const': 'unknown'}, 'fields': {'status': {}}}},
                            relation) }}
  {%- else -%}
    {%- for r in rules %}
    {{ paynorm_extract_rule(r, relation) }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
  {%- endif -%}
{%- endmacro %}
