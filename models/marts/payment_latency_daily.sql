{#- Provider latency of live payment attempts per UTC day and provider. Percentiles are
    percentile_disc: an observed latency, exact (no interpolation, no float), over the attempts
    whose payload reports a latency. Not additive: never average them across days. -#}

with

attempts as (

    select
        (event_at at time zone 'UTC')::date as event_date,
        provider,
        latency_ms
    from {{ ref('normalized_payment_events') }}
    where not is_test
      and {{ paynorm_is_attempt('event_type') }}
      and latency_ms is not null

),

final as (

    select
        {{ paynorm_surrogate_key(['event_date', 'provider'], 'paynorm-latency') }} as latency_id,
        event_date,
        provider,
        count(*) as events_with_latency,
        percentile_disc(0.5) within group (order by latency_ms) as latency_p50_ms,
        percentile_disc(0.95) within group (order by latency_ms) as latency_p95_ms,
        percentile_disc(0.99) within group (order by latency_ms) as latency_p99_ms
    from attempts
    group by event_date, provider

)

select * from final
