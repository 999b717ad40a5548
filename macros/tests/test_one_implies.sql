{#- Rows where `condition` holds must satisfy `then` (e.g. a decline category only on declines). -#}
{% test one_implies(model, condition, then) %}
  {%- if not condition or not then -%}
    {{ exceptions.raise_compiler_error("one_implies: give condition and then") }}
  {%- endif %}
select *
from {{ model }}
where ({{ condition }}) and not coalesce(({{ then }}), false)
{% endtest %}
