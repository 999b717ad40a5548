with

converted as (

    {{ paynorm_convert(ref('int_transactions_extracted')) }}

)

select * from converted
