{#- Where the live landed rows ended, counted from the three marts that hold them: events,
    quarantine (per reason) or pending the LLM step. The share of events is the normalization
    coverage; a growing quarantine reason is a rule to fix. -#}

with

placed as (

    select 'event'::text as outcome, null::text as reason from {{ ref('normalized_payment_events') }}
    union all
    select 'quarantine', reason from {{ ref('normalization_quarantine') }}
    union all
    select 'pending', null from {{ ref('normalization_pending') }}

),

final as (

    select
        outcome,
        reason,
        count(*) as rows
    from placed
    group by outcome, reason

)

select * from final
