{#- Rows of `relation` (staged columns + mapping_id) that no active rule matched:
    decode errors and empty payloads -> quarantine decode_error; shapes the LLM step has not tried
    -> pending; tried and unmappable -> quarantine llm_unmappable; tried otherwise -> quarantine no_rule.
    `passthrough`: columns of `relation` carried along unchanged at the end. -#}
{% macro paynorm_classify_unmatched(relation, passthrough=[]) -%}
  {%- if passthrough is string -%}
    {{ exceptions.raise_compiler_error("paynorm_classify_unmatched: passthrough must be a list of column names") }}
  {%- endif -%}
select
    u.lake_key,
    u.load_seq,
    ls.status as llm_shape_status,
    {{ paynorm_unmatched_case('outcome', paynorm_undecodable('u'), 'ls.status') }} as outcome,
    {{ paynorm_unmatched_case('reason', paynorm_undecodable('u'), 'ls.status') }} as reason
    {%- for c in passthrough %},
    u.{{ adapter.quote(c) }}
    {%- endfor %}
from {{ relation }} as u
left join {{ source('paynorm', 'llm_shapes') }} as ls
    on ls.shape_key = u.shape_key
where u.mapping_id is null
{%- endmacro %}
