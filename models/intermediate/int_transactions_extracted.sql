{%- set rules = paynorm_active_rules() -%}

with

matched as (

    select * from {{ ref('int_transactions_matched') }}

),

extracted as (

    {{ paynorm_extract('matched', rules) }}

)

select * from extracted
