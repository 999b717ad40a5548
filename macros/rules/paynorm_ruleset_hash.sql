{#- Hash of the active rule set (same formula as consumer.mappings.active_ruleset_hash). -#}
{% macro paynorm_ruleset_hash(rules) -%}
  {%- set parts = [] -%}
  {%- for r in rules | sort(attribute='id') -%}{%- do parts.append(r.id ~ ':' ~ r.rule_hash) -%}{%- endfor -%}
  {{ return(local_md5(parts | join(','))) }}
{%- endmacro %}
