{#- Deterministic uuid from one or more columns (md5 of the '|'-joined text, NULL as '_null_'). -#}
{% macro paynorm_surrogate_key(columns, namespace='paynorm') -%}
  {%- if columns is string -%}{%- set columns = [columns] -%}{%- endif -%}
  {%- if columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("paynorm_surrogate_key: give at least one column") }}
  {%- endif -%}
  md5({{ paynorm_sql_string(namespace) }}
  {%- for c in columns %} || '|' || coalesce(cast({{ c }} as text), '_null_'){% endfor %})::uuid
{%- endmacro %}
