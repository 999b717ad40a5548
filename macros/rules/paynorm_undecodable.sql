{#- True when the row `row` (an alias with payload, payload_format and decode_error) has nothing a
    rule could read: the payload could not be decoded or is empty. -#}
{% macro paynorm_undecodable(row) -%}
  {%- if row is not string or not row -%}
    {{ exceptions.raise_compiler_error("paynorm_undecodable: row must be a table alias") }}
  {%- endif -%}
  ({{ row }}.decode_error is not null or {{ row }}.payload is null or {{ row }}.payload_format = 'empty')
{%- endmacro %}
