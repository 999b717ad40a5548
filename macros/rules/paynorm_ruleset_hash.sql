{#- Hash of the active rule set, from paynorm.active_ruleset_hash() (consumer/sql/mappings.sql):
    one definition for the models and for Python. `rules` (the list paynorm_active_rules read) is
    checked against it: they are read in the same build. At parse time (execute = false) 'none'. -#}
{% macro paynorm_ruleset_hash(rules) -%}
  {%- if rules is string or rules is mapping -%}
    {{ exceptions.raise_compiler_error("paynorm_ruleset_hash: rules must be the list of paynorm_active_rules()") }}
  {%- endif -%}
  {%- if not execute -%}{{ return('none') }}{%- endif -%}
  {%- set q -%}select {{ adapter.quote(var('paynorm_schema')) }}.active_ruleset_hash(){%- endset -%}
  {{ return(run_query(q).columns[0].values()[0]) }}
{%- endmacro %}
