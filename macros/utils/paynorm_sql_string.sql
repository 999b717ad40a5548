{#- A SQL string literal for any value (NULL for none): quotes doubled, never interpolated raw. -#}
{% macro paynorm_sql_string(value) -%}
  {%- if value is none -%}null
  {%- elif value is sameas true -%}'true'
  {%- elif value is sameas false -%}'false'
  {%- else -%}'{{ (value | string) | replace("'", "''") }}'
  {%- endif -%}
{%- endmacro %}
