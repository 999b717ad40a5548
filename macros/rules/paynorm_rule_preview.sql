{#- What ONE candidate rule (a parsed rule document, e.g. `var('paynorm_candidate')`) would make of
    the live landed rows it matches, compiled by the same macros as the build (paynorm_match_case,
    paynorm_extract, paynorm_convert): one row per captured lake row with every canonical column,
    `invalid_reason`, `amount_withheld_reason`, plus `current_mapping_id` (the active rule that
    matches the row today, if any) and `shape_key`. `shape_key`: only rows of that shape and rows
    the candidate captures. Used by `paynorm mappings test` and the LLM step's validation. -#}
{% macro paynorm_rule_preview(candidate, shape_key=none) -%}
  {%- if candidate is not mapping or candidate.id is not defined or candidate.match is not defined -%}
    {{ exceptions.raise_compiler_error("paynorm_rule_preview: candidate must be a rule document with id and match") }}
  {%- endif -%}
  {%- set active = [] -%}
  {%- for r in paynorm_active_rules() if r.id != candidate.id -%}{%- do active.append(r) -%}{%- endfor -%}
  {%- set cand = {'id': candidate.id, 'rule_hash': 'candidate', 'priority': candidate.priority | default(100),
                  'formats': candidate.formats, 'rule': candidate, 'origin': candidate.origin | default('user'),
                  'model': candidate.model | default(none)} -%}
with

staged as (

    select * from {{ ref('stg_lake__transactions') }}
    where not is_deleted and decode_error is null
    {%- if shape_key %}
      and (shape_key = {{ paynorm_sql_string(shape_key) }}
           or {{ paynorm_match_case([cand], 'payload', 'payload_format', 'row_data') }} is not null)
    {%- endif %}

),

matched as (

    select
        staged.*,
        {{ paynorm_match_case([cand], 'staged.payload', 'staged.payload_format', 'staged.row_data') }} as mapping_id,
        {{ paynorm_match_case(active, 'staged.payload', 'staged.payload_format', 'staged.row_data') }}
            as current_mapping_id
    from staged

),

extracted as (

    {{ paynorm_extract('matched', [cand], passthrough=['current_mapping_id', 'shape_key', 'payload_format']) }}

),

converted as (

    {{ paynorm_convert('extracted', passthrough=['current_mapping_id', 'shape_key', 'payload_format']) }}

)

select * from converted
{%- endmacro %}
