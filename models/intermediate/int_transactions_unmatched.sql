with

matched as (

    select * from {{ ref('int_transactions_matched') }}

),

unmatched as (

    {{ paynorm_classify_unmatched('matched') }}

)

select * from unmatched
