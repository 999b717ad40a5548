{#- Generic test: no two rows share the same values of `columns` (a composite key). -#}
{% test unique_combination(model, columns) -%}
  {%- if columns is string or columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("unique_combination: columns must be a non-empty list of column names") }}
  {%- endif -%}
select {% for c in columns %}{{ adapter.quote(c) }}{{ ', ' if not loop.last }}{% endfor %}, count(*) as n
from {{ model }}
group by {% for c in columns %}{{ adapter.quote(c) }}{{ ', ' if not loop.last }}{% endfor %}
having count(*) > 1
{%- endtest %}
