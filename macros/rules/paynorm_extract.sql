{#- Extracted values of every row of `relation` (staged columns + mapping_id) that an active rule
    matched. One pass over `relation`: a CASE on the row's mapping_id evaluates the values of that
    rule only (paynorm_extract_rule: one text array per rule), then the array is split into typed
    columns (paynorm_extracted_columns). With no active rule, an empty relation of the same
    columns. `passthrough`: columns of `relation` carried along unchanged after the extracted ones
    (saves joining back to `relation` on lake_key). `keep_unmatched`: rows no rule matched come out
    too, with every extracted column NULL (one pass over `relation` for every outcome). -#}
{% macro paynorm_extract(relation, rules, passthrough=[], keep_unmatched=false) -%}
  {%- if passthrough is string -%}
    {{ exceptions.raise_compiler_error("paynorm_extract: passthrough must be a list of column names") }}
  {%- endif -%}
  {%- if keep_unmatched is not sameas true and keep_unmatched is not sameas false -%}
    {{ exceptions.raise_compiler_error("paynorm_extract: keep_unmatched must be true or false") }}
  {%- endif -%}
  {%- set none_rule = {'id': 'none', 'rule_hash': 'none', 'priority': 0,
                       'rule': {'provider': {'const': 'unknown'}, 'fields': {'status': {}}}} -%}
select
    e.lake_key,
    e.load_seq,
    {%- for c in paynorm_extracted_columns() %}
    e.extracted[{{ loop.index }}]::{{ c.type }} as {{ c.name }}{{ ',' if (passthrough or not loop.last) }}
    {%- endfor %}
    {%- for c in passthrough %}
    e.{{ adapter.quote(c) }}{{ ',' if not loop.last }}
    {%- endfor %}
from (
    select
        m.lake_key,
        m.load_seq,
        {%- for c in passthrough %}
        m.{{ adapter.quote(c) }},
        {%- endfor %}
        case m.mapping_id
        {%- for r in (rules if rules | length > 0 else [none_rule]) %}
        when {{ paynorm_sql_string(r.id) }} then
        {{ paynorm_extract_rule(r) }}
        {%- endfor %}
        end as extracted
    from {{ relation }} as m
    {%- if not keep_unmatched %}
    where m.mapping_id is not null
    {%- endif %}
    -- a planner fence: without it the CASE would be evaluated once per column read from its array
    -- (OFFSET NULL, not OFFSET 0: see paynorm_convert)
    offset null
) as e
{%- if not keep_unmatched %}
where e.extracted is not null
{%- endif %}
{%- endmacro %}
