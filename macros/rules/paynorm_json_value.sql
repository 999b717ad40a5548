{#- Text of the first item at a SQL/JSON path (NULL when missing; errors silenced).
    root: 'payload' or 'row_data' column expression. Strings come unquoted, numbers as their exact
    decimal text, objects/arrays as JSON text. -#}
{% macro paynorm_json_value(root, path) -%}
  {%- if path is none or path is not string -%}
    {{ exceptions.raise_compiler_error("paynorm_json_value: path must be a string, got " ~ path) }}
  {%- endif -%}
  (jsonb_path_query_first({{ root }}, {{ paynorm_sql_string(path) }}::jsonpath, '{}'::jsonb, true) #>> '{}')
{%- endmacro %}
