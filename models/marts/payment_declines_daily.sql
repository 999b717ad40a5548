{#- Declined live payment attempts per UTC day, decline category, provider, card network and issuer
    country: where approvals are lost, and why. Errors (technical failures) are not declines and are
    counted in payment_kpis_daily.errors. -#}

with

declines as (

    select
        (event_at at time zone 'UTC')::date as event_date,
        coalesce(decline_category, 'other') as decline_category,
        provider,
        card_network,
        issuer_country
    from {{ ref('normalized_payment_events') }}
    where not is_test
      and {{ paynorm_is_attempt('event_type') }}
      and status = 'declined'

),

final as (

    select
        {{ paynorm_surrogate_key(['event_date', 'decline_category', 'provider', 'card_network', 'issuer_country'],
                                 'paynorm-decline') }} as decline_id,
        event_date,
        decline_category,
        provider,
        card_network,
        issuer_country,
        count(*) as declines
    from declines
    group by event_date, decline_category, provider, card_network, issuer_country

)

select * from final
