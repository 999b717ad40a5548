{#- Daily KPIs per provider, merchant and merchant country, over live (non-test) payment attempts
    (event_type authorization, sale or unknown; refunds, captures, voids, chargebacks and
    verifications are counted apart). Approval rate = approved / (approved + declined). Latency
    percentiles are percentile_disc (an observed value, no float). Volume = approved amounts per
    currency, numeric. Rebuilt in full at every run (one aggregate over the events). -#}

with

events as (

    select * from {{ ref('normalized_payment_events') }}
    where not is_test

),

attempts as (

    select
        (event_at at time zone 'UTC')::date as event_date,
        provider,
        merchant_id,
        merchant_country,
        status,
        latency_ms,
        currency,
        amount,
        event_type in ('authorization', 'sale', 'unknown') as is_attempt,
        event_type = 'refund' as is_refund
    from events

),

volumes as (

    select
        event_date, provider, merchant_id, merchant_country,
        jsonb_object_agg(coalesce(currency, 'unknown'), volume order by coalesce(currency, 'unknown')) as approved_volume_by_currency
    from (
        select event_date, provider, merchant_id, merchant_country, currency, sum(amount) as volume
        from attempts
        where is_attempt and status = 'approved' and amount is not null
        group by 1, 2, 3, 4, 5
    ) as v
    group by 1, 2, 3, 4

),

daily as (

    select
        event_date,
        provider,
        merchant_id,
        merchant_country,
        count(*) filter (where is_attempt) as attempts,
        count(*) filter (where is_attempt and status = 'approved') as approved,
        count(*) filter (where is_attempt and status = 'declined') as declined,
        count(*) filter (where is_attempt and status = 'error') as errors,
        count(*) filter (where is_attempt and status = 'pending') as pending,
        count(*) filter (where is_attempt and status in ('cancelled', 'expired')) as cancelled_or_expired,
        count(*) filter (where is_refund) as refunds,
        percentile_disc(0.5) within group (order by latency_ms) filter (where is_attempt) as latency_p50_ms,
        percentile_disc(0.95) within group (order by latency_ms) filter (where is_attempt) as latency_p95_ms
    from attempts
    group by 1, 2, 3, 4

),

final as (

    select
        {{ paynorm_surrogate_key(['d.event_date', 'd.provider', 'd.merchant_id', 'd.merchant_country'], 'paynorm-kpi') }} as kpi_id,
        d.event_date,
        d.provider,
        d.merchant_id,
        d.merchant_country,
        d.attempts,
        d.approved,
        d.declined,
        d.errors,
        d.pending,
        d.cancelled_or_expired,
        d.refunds,
        case when d.approved + d.declined > 0
            then round(d.approved::numeric / (d.approved + d.declined), 4) end as approval_rate,
        d.latency_p50_ms,
        d.latency_p95_ms,
        coalesce(v.approved_volume_by_currency, '{}'::jsonb) as approved_volume_by_currency
    from daily as d
    left join volumes as v
        on v.event_date is not distinct from d.event_date
        and v.provider = d.provider
        and v.merchant_id is not distinct from d.merchant_id
        and v.merchant_country is not distinct from d.merchant_country

)

select * from final
