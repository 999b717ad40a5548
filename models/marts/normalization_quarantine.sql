{{ config(materialized='view') }}

{#- Landed rows that cannot become events, with the reason. A view over int_transactions_normalized:
    always current, no rebuild cost. -#}

with

normalized as (

    select * from {{ ref('int_transactions_normalized') }}
    where outcome = 'quarantine'

),

final as (

    select
        lake_key,
        shape_key,
        reason,
        source_format,
        mapping_id,
        provider,
        provider_status_raw,
        amount_raw,
        payload_excerpt,
        llm_shape_status,
        load_seq,
        ingested_at,
        normalized_at
    from normalized

)

select * from final
