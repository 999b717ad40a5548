with

source as (

    select * from {{ source('lake', 'lake_transactions') }}

),

renamed as (

    select
        -- ids
        lake_key,
        load_seq,
        landed_xid,
        shape_key,

        -- payload
        payload,
        payload_format,
        decode_error,
        {{ paynorm_raw_payload('row_data') }} as raw_payload,

        -- lake row image (column names are dbt vars: both lake layouts work)
        row_data,
        row_data ->> {{ paynorm_sql_string(var('transaction_id_column')) }} as row_transaction_id,
        case when jsonb_typeof(row_data -> {{ paynorm_sql_string(var('merchant_column')) }}) = 'object'
            then row_data -> {{ paynorm_sql_string(var('merchant_column')) }} ->> 'id' end as row_merchant_id,
        case when jsonb_typeof(row_data -> {{ paynorm_sql_string(var('merchant_column')) }}) = 'object'
            then row_data -> {{ paynorm_sql_string(var('merchant_column')) }} ->> 'name' end as row_merchant_name,
        case when jsonb_typeof(row_data -> {{ paynorm_sql_string(var('merchant_column')) }}) = 'object'
            then row_data -> {{ paynorm_sql_string(var('merchant_column')) }} ->> 'country' end as row_merchant_country,
        row_data ->> {{ paynorm_sql_string(var('source_column')) }} as row_source,
        {{ adapter.quote(var('paynorm_schema')) }}.try_timestamptz(
            row_data ->> {{ paynorm_sql_string(var('created_at_column')) }}
        ) as row_created_at,
        row_data ->> {{ paynorm_sql_string(var('created_at_column')) }} as row_created_at_text,

        -- landing metadata
        op,
        deleted as is_deleted,
        source as landing_source,
        lake_lsn::text as lake_lsn,
        committed_at,
        loaded_at

    from source

)

select * from renamed
