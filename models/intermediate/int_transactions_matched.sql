{%- set rules = paynorm_active_rules() -%}

with

staged as (

    select * from {{ ref('stg_lake__transactions') }}

),

matched as (

    {{ paynorm_match_rows('staged', rules) }}

)

select * from matched
