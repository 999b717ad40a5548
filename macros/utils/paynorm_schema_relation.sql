{#- A table of the paynorm schema (mappings, llm_shapes) as a quoted relation name. -#}
{% macro paynorm_schema_relation(name) -%}
  {%- if name not in ['mappings', 'llm_shapes'] -%}
    {{ exceptions.raise_compiler_error("paynorm_schema_relation: unknown table " ~ name) }}
  {%- endif -%}
  {{ adapter.quote(var('paynorm_schema')) }}.{{ adapter.quote(name) }}
{%- endmacro %}
