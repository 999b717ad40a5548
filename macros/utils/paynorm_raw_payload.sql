{#- The lake row's payload column as landed (jsonb; a string when it was text), from a landed row
    image (paynorm_row_value's arguments): the payload column, else its legacy name (dbt vars
    payload_column and legacy_payload_column). -#}
{% macro paynorm_raw_payload(row_columns, payload_key, payload) -%}
  coalesce(
            {{ paynorm_row_value(row_columns, payload_key, payload, var('payload_column')) }},
            {{ paynorm_row_value(row_columns, payload_key, payload, var('legacy_payload_column')) }}
        )
{%- endmacro %}
