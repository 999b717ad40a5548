{#- Appends [jsonpath, is_predicate] to `out` for every row_match and row_path in a rule document,
    at any depth. -#}
{% macro paynorm_collect_row_paths(node, out) -%}
  {%- if out is string or out is mapping or out is not iterable -%}
    {{ exceptions.raise_compiler_error("paynorm_collect_row_paths: out must be a list") }}
  {%- endif -%}
  {%- if node is mapping -%}
    {%- for k, v in node.items() -%}
      {%- if k == 'row_match' or k == 'row_path' -%}
        {%- do out.append([v, k == 'row_match']) -%}
      {%- else -%}
        {%- do paynorm_collect_row_paths(v, out) -%}
      {%- endif -%}
    {%- endfor -%}
  {%- elif node is iterable and node is not string -%}
    {%- for v in node -%}{%- do paynorm_collect_row_paths(v, out) -%}{%- endfor -%}
  {%- endif -%}
{%- endmacro %}
