{#- The whole lake row image of a landed row (jsonb): its columns (`row_columns`, the landing's
    row_data) with the payload column put back when `payload_key` names it (the landing leaves
    that column out: the decoded `payload` is its value). It calls the landing's own function,
    row_image (consumer/sql/warehouse.sql, beside the landing table), which PostgreSQL inlines. -#}
{% macro paynorm_full_row_image(row_columns, payload_key, payload) -%}
  {%- if row_columns is not string or payload_key is not string or payload is not string
        or not row_columns or not payload_key or not payload -%}
    {{ exceptions.raise_compiler_error("paynorm_full_row_image: row_columns, payload_key and payload must be SQL expressions") }}
  {%- endif -%}
  {{ adapter.quote(var('landing_schema')) }}.row_image({{ row_columns }}, {{ payload_key }}, {{ payload }})
{%- endmacro %}
