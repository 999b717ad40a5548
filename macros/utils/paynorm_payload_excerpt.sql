{#- The first characters (dbt var payload_excerpt_chars) of a row's payload as JSON text, else of
    its payload column as landed (paynorm_raw_payload of the row image), else ''. -#}
{% macro paynorm_payload_excerpt(payload, row_data) -%}
  {%- if payload is not string or row_data is not string -%}
    {{ exceptions.raise_compiler_error("paynorm_payload_excerpt: payload and row_data must be SQL expressions") }}
  {%- endif -%}
  left(coalesce({{ payload }}::text, {{ paynorm_raw_payload(row_data) }}::text, ''), {{ var('payload_excerpt_chars') | int }})
{%- endmacro %}
