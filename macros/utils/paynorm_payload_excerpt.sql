{#- The first characters (dbt var payload_excerpt_chars) of a row's payload as JSON text, else of
    its payload column as landed (`raw_payload`: paynorm_raw_payload of the row image), else ''. -#}
{% macro paynorm_payload_excerpt(payload, raw_payload) -%}
  {%- if payload is not string or raw_payload is not string -%}
    {{ exceptions.raise_compiler_error("paynorm_payload_excerpt: payload and raw_payload must be SQL expressions") }}
  {%- endif -%}
  left(coalesce({{ payload }}::text, {{ raw_payload }}::text, ''), {{ var('payload_excerpt_chars') | int }})
{%- endmacro %}
