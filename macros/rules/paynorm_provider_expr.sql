{#- The canonical provider of a rule: constant, or a path value lower-cased to [a-z0-9_], mapped,
    else the default, else 'unknown'. -#}
{% macro paynorm_provider_expr(spec, payload='payload', row_data='row_data') -%}
  {%- if spec is none -%}
    {{ exceptions.raise_compiler_error("paynorm_provider_expr: a rule needs a provider") }}
  {%- endif -%}
  {%- if spec.const is defined and spec.const -%}
    {{ paynorm_sql_string(spec.const) }}::text
  {%- else -%}
    {%- set raw = paynorm_field_raw(spec, payload, row_data) -%}
    coalesce(
      {{ paynorm_field_map(raw, spec) }},
      nullif(btrim(regexp_replace(lower(btrim({{ raw }})), '[^a-z0-9]+', '_', 'g'), '_'), ''),
      {{ paynorm_sql_string(spec.default if spec.default is defined else none) }}::text,
      'unknown'
    )
  {%- endif -%}
{%- endmacro %}
