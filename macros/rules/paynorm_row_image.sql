{#- The part of a landed lake row image (paynorm_full_row_image's arguments) that `rules` read through
    their row-side paths (row_match, row_path): the build carries it through its sort by shape
    instead of the whole image, which holds the payload a second time and every lake column.
    (Argument checks: paynorm_row_value and paynorm_full_row_image.)

    When every row-side path reads named top-level keys only (`$.key…`, `@.key…`, `$."key"…`, a
    row_match filter on the root `$ ? (…)`), the image is narrowed to those keys, each one present
    in the row kept with its whole value: every such path then finds what it finds in the whole
    image (a key absent stays absent, a JSON null stays null). A path that could reach other keys (a
    wildcard, `..`/`**`, a method such as keyvalue(), a variable, a bare `@`, an escaped key) keeps
    the whole image. No row-side path at all: an empty object. var('paynorm_narrow_row_image')
    false keeps the whole image always. -#}
{% macro paynorm_row_image(rules, row_columns, payload_key, payload) -%}
  {%- set keys = paynorm_row_image_keys(rules) -%}
  {%- if keys is none or not var('paynorm_narrow_row_image', true) -%}
    {{ paynorm_full_row_image(row_columns, payload_key, payload) }}
  {%- elif keys | length == 0 -%}'{}'::jsonb
  {%- else -%}
    ({% for k in keys %}{% if not loop.first %} || {% endif -%}
     {%- set value = paynorm_row_value(row_columns, payload_key, payload, k) -%}
     case when ({{ value }}) is not null
          then jsonb_build_object({{ paynorm_sql_string(k) }}, {{ value }})
          else '{}'::jsonb end
    {%- endfor %})
  {%- endif -%}
{%- endmacro %}
