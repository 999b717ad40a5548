{#- Daily payment KPIs over live (non-test) events, one row per UTC day, provider, merchant,
    merchant country, card network, issuer country, payment method and currency. Attempts are
    defined once (macro paynorm_is_attempt); refunds, voids and chargebacks are their own event
    types, counted when completed (status approved). Volume never mixes currencies: each row holds
    one currency, and events without a currency form their own bucket (currency NULL, amounts
    withheld upstream, so approved_amount is NULL). Rebuilt in full at every run. -#}

with

events as (

    select * from {{ ref('normalized_payment_events') }}
    where not is_test

),

classified as (

    select
        (event_at at time zone 'UTC')::date as event_date,
        provider,
        merchant_id,
        merchant_country,
        card_network,
        issuer_country,
        payment_method,
        currency,
        status,
        -- an amount is only meaningful with its currency: none in the currency-NULL bucket
        case when currency is not null then amount end as amount,
        {{ paynorm_is_attempt('event_type') }} as is_attempt,
        event_type
    from events

),

daily as (

    select
        event_date,
        provider,
        merchant_id,
        merchant_country,
        card_network,
        issuer_country,
        payment_method,
        currency,
        count(*) filter (where is_attempt) as attempts,
        count(*) filter (where is_attempt and status = 'approved') as approved,
        count(*) filter (where is_attempt and status = 'declined') as declined,
        count(*) filter (where is_attempt and status = 'error') as errors,
        count(*) filter (where is_attempt and status = 'pending') as pending,
        count(*) filter (where is_attempt and status in ('cancelled', 'expired')) as cancelled_or_expired,
        sum(amount) filter (where is_attempt and status = 'approved') as approved_amount,
        count(*) filter (where is_attempt and status = 'approved' and amount is null) as approved_without_amount,
        count(*) filter (where event_type = 'refund' and status = 'approved') as refunds,
        sum(amount) filter (where event_type = 'refund' and status = 'approved') as refunded_amount,
        count(*) filter (where event_type = 'void' and status = 'approved') as voids,
        count(*) filter (where event_type = 'chargeback' and status = 'approved') as chargebacks
    from classified
    group by 1, 2, 3, 4, 5, 6, 7, 8

),

final as (

    select
        {{ paynorm_surrogate_key(['event_date', 'provider', 'merchant_id', 'merchant_country', 'card_network',
                                  'issuer_country', 'payment_method', 'currency'], 'paynorm-kpi') }} as kpi_id,
        event_date,
        provider,
        merchant_id,
        merchant_country,
        card_network,
        issuer_country,
        payment_method,
        currency,
        attempts,
        approved,
        declined,
        errors,
        pending,
        cancelled_or_expired,
        case when approved + declined > 0
            then round(approved::numeric / (approved + declined), 4) end as approval_rate,
        case when approved + declined > 0
            then round(declined::numeric / (approved + declined), 4) end as decline_rate,
        case when currency is not null then coalesce(approved_amount, 0) end as approved_amount,
        approved_without_amount,
        refunds,
        case when currency is not null then coalesce(refunded_amount, 0) end as refunded_amount,
        voids,
        chargebacks,
        case when approved > 0 then round(refunds::numeric / approved, 4) end as refund_rate,
        case when approved > 0 then round(chargebacks::numeric / approved, 4) end as chargeback_rate
    from daily

)

select * from final
