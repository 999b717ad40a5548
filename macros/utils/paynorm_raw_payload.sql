{#- The lake row's payload column as landed (jsonb; a string when it was text), from the row image
    `row_data`: the payload column, else its legacy name (dbt vars payload_column and
    legacy_payload_column). -#}
{% macro paynorm_raw_payload(row_data) -%}
  {%- if row_data is not string or not row_data -%}
    {{ exceptions.raise_compiler_error("paynorm_raw_payload: row_data must be a SQL expression") }}
  {%- endif -%}
  coalesce(
            {{ row_data }} -> {{ paynorm_sql_string(var('payload_column')) }},
            {{ row_data }} -> {{ paynorm_sql_string(var('legacy_payload_column')) }}
        )
{%- endmacro %}
