{#- The placement of a row no active rule matched, as a CASE on two SQL expressions: `undecodable`
    (boolean, paynorm_undecodable: the payload could not be decoded or is empty) and `shape_status`
    (the row's shape in paynorm.llm_shapes, NULL when the LLM step has not tried it). what = 'outcome': quarantine when
    undecodable, pending when the shape is untried, else quarantine. what = 'reason': decode_error |
    NULL (pending) | llm_unmappable | no_rule. -#}
{% macro paynorm_unmatched_case(what, undecodable, shape_status) -%}
  {%- if what == 'outcome' -%}
    case
        when ({{ undecodable }}) then 'quarantine'
        when {{ shape_status }} is null then 'pending'
        else 'quarantine'
    end
  {%- elif what == 'reason' -%}
    case
        when ({{ undecodable }}) then 'decode_error'
        when {{ shape_status }} is null then null
        when {{ shape_status }} = 'unmappable' then 'llm_unmappable'
        else 'no_rule'
    end
  {%- else -%}
    {{ exceptions.raise_compiler_error("paynorm_unmatched_case: what must be 'outcome' or 'reason', got " ~ what) }}
  {%- endif -%}
{%- endmacro %}
