{#- What candidate rules (a parsed rule document, e.g. `var('paynorm_candidate')`, or a list of
    them, tried in priority order like the build) would make of the live landed rows they match,
    compiled by the same macros as the build (paynorm_match_case, paynorm_extract, paynorm_convert):
    one row per captured lake row with every canonical column, `invalid_reason`,
    `amount_withheld_reason`, plus `current_mapping_id` (the active rule, other than the candidates,
    that matches the row today, if any) and `shape_key`. `shape_key`: only rows of that shape and
    rows a candidate captures. Used by `paynorm mappings test`, the LLM step's validation and the
    parity test. -#}
{% macro paynorm_rule_preview(candidates, shape_key=none) -%}
  {%- set listed = candidates if (candidates is iterable and candidates is not mapping and candidates is not string)
                   else [candidates] -%}
  {%- set cands = [] -%}
  {%- for c in listed -%}
    {%- if c is not mapping or c.id is not defined or c.match is not defined -%}
      {{ exceptions.raise_compiler_error("paynorm_rule_preview: a candidate must be a rule document with id and match") }}
    {%- endif -%}
    {%- do cands.append({'id': c.id, 'rule_hash': 'candidate', 'priority': c.priority | default(100),
                         'formats': c.formats, 'rule': c, 'origin': c.origin | default('user'),
                         'model': c.model | default(none)}) -%}
  {%- endfor -%}
  {%- set cands = cands | sort(attribute='id') | sort(attribute='priority', reverse=true) -%}
  {%- set ids = cands | map(attribute='id') | list -%}
  {%- set active = [] -%}
  {%- for r in paynorm_active_rules() if r.id not in ids -%}{%- do active.append(r) -%}{%- endfor -%}
with

staged as (

    select * from {{ ref('stg_lake__transactions') }}
    where not is_deleted and decode_error is null
    {%- if shape_key %}
      and (shape_key = {{ paynorm_sql_string(shape_key) }}
           or {{ paynorm_match_case(cands, 'payload', 'payload_format', 'row_data') }} is not null)
    {%- endif %}

),

matched as (

    select
        staged.*,
        {{ paynorm_match_case(cands, 'staged.payload', 'staged.payload_format', 'staged.row_data') }} as mapping_id,
        {{ paynorm_match_case(active, 'staged.payload', 'staged.payload_format', 'staged.row_data') }}
            as current_mapping_id
    from staged

),

extracted as (

    {{ paynorm_extract('matched', cands, passthrough=['current_mapping_id', 'shape_key', 'payload_format']) }}

),

converted as (

    {{ paynorm_convert('extracted', passthrough=['current_mapping_id', 'shape_key', 'payload_format']) }}

)

select * from converted
{%- endmacro %}
