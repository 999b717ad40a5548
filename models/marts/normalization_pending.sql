{{ config(materialized='view') }}

{#- Landed rows that no active rule matches and whose shape the LLM step has not tried yet. -#}

with

normalized as (

    select * from {{ ref('int_transactions_normalized') }}
    where outcome = 'pending'

),

final as (

    select
        lake_key,
        shape_key,
        source_format,
        payload_excerpt,
        load_seq,
        ingested_at,
        normalized_at
    from normalized

)

select * from final
