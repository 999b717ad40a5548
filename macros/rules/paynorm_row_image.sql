{#- The part of the lake row image `row_data` (a jsonb SQL expression) that `rules` read through
    their row-side paths (row_match, row_path): the build carries it through its sort by shape
    instead of the whole image, which holds the payload a second time and every lake column.

    When every row-side path reads named top-level keys only (`$.key…`, `@.key…`, `$."key"…`, a
    row_match filter on the root `$ ? (…)`), the image is narrowed to those keys, each one present
    in the row kept with its whole value: every such path then finds what it finds in the whole
    image (a key absent stays absent, a JSON null stays null). A path that could reach other keys (a
    wildcard, `..`/`**`, a method such as keyvalue(), a variable, a bare `@`, an escaped key) keeps
    the whole image. No row-side path at all: an empty object. var('paynorm_narrow_row_image')
    false keeps the whole image always. -#}
{% macro paynorm_row_image(rules, row_data) -%}
  {%- if row_data is not string or not row_data -%}
    {{ exceptions.raise_compiler_error("paynorm_row_image: row_data must be a SQL expression") }}
  {%- endif -%}
  {%- set keys = paynorm_row_image_keys(rules) -%}
  {%- if keys is none or not var('paynorm_narrow_row_image', true) -%}{{ row_data }}
  {%- elif keys | length == 0 -%}'{}'::jsonb
  {%- else -%}
    ({% for k in keys %}{% if not loop.first %} || {% endif -%}
     case when ({{ row_data }} -> {{ paynorm_sql_string(k) }}) is not null
          then jsonb_build_object({{ paynorm_sql_string(k) }}, {{ row_data }} -> {{ paynorm_sql_string(k) }})
          else '{}'::jsonb end
    {%- endfor %})
  {%- endif -%}
{%- endmacro %}
