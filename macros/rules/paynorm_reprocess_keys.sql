{#- Keys of an existing int_transactions_normalized (`this`) that must be normalized again:
    - quarantined/pending rows normalized under another active rule set (a new or changed rule may
      now match them: they get another chance);
    - unmatched rows whose LLM shape status changed (pending -> tried);
    - rows matched by a rule that changed (other rule_hash) or is no longer active.
    Every branch is an index range scan: the work is proportional to the rows concerned.
    Rows matched by an unchanged rule are not re-evaluated (use --full-refresh after seed changes
    or to let a new higher-priority rule capture rows another rule already matches). -#}
{% macro paynorm_reprocess_keys(this_relation, rules, ruleset_hash) -%}
  {%- set present = [] -%}
  {%- if execute -%}
    {%- set q -%}
      with recursive ids as (
          (select mapping_id from {{ this_relation }} where mapping_id is not null order by mapping_id limit 1)
          union all
          select (select t.mapping_id from {{ this_relation }} as t
                  where t.mapping_id > ids.mapping_id order by t.mapping_id limit 1)
          from ids where ids.mapping_id is not null
      )
      select mapping_id from ids where mapping_id is not null
    {%- endset -%}
    {%- for row in run_query(q).rows -%}{%- do present.append(row[0]) -%}{%- endfor -%}
  {%- endif -%}
  {%- set active = {} -%}
  {%- for r in rules -%}{%- do active.update({r.id: r.rule_hash}) -%}{%- endfor -%}
    select t.lake_key from {{ this_relation }} as t
    where t.outcome in ('quarantine', 'pending')
      and (t.ruleset_hash < {{ paynorm_sql_string(ruleset_hash) }} or t.ruleset_hash > {{ paynorm_sql_string(ruleset_hash) }})
    union
    select t.lake_key from {{ this_relation }} as t
    left join {{ source('paynorm', 'llm_shapes') }} as ls on ls.shape_key = t.shape_key
    where t.outcome in ('quarantine', 'pending') and t.mapping_id is null
      and t.llm_shape_status is distinct from ls.status
  {%- for mid in present %}
    union
    select t.lake_key from {{ this_relation }} as t
    where t.mapping_id = {{ paynorm_sql_string(mid) }}
    {%- if mid in active %}
      and (t.rule_hash < {{ paynorm_sql_string(active[mid]) }} or t.rule_hash > {{ paynorm_sql_string(active[mid]) }})
    {%- endif %}
  {%- endfor %}
{%- endmacro %}
