{{
    config(
        materialized='incremental',
        unique_key='lake_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        pre_hook=["set local parallel_leader_participation = off"],
        indexes=[
            {'columns': ['lake_key'], 'unique': True},
            {'columns': ['normalized_at']},
            {'columns': ['outcome', 'ruleset_hash']},
            {'columns': ['mapping_id', 'rule_hash']},
            {'columns': ['load_seq']},
            {'columns': ['build_xmin']},
        ],
    )
}}

{#- One row per landed lake row with its outcome: event | quarantine | pending | deleted.
    Incremental, in COMMIT order: a landing row whose image was written by a transaction that had
    not committed when the previous build took its snapshot has landed_xid >= that snapshot's xmin
    (build_xmin, recorded on every row a build writes), so it is picked up by the next build however
    late it commits and whatever load_seq it took. Plus new load_seq values and the rows
    paynorm_reprocess_keys selects; everything else is left untouched. -#}
{%- set rules = paynorm_active_rules() -%}
{%- set ruleset_hash = paynorm_ruleset_hash(rules) -%}
{%- set watermark = none -%}
{%- set prev_xmin = none -%}
{%- if execute and is_incremental() -%}
    {#- a table built before build_xmin existed gets the column from this build (sync_all_columns);
        until then there is no horizon and the load_seq lookback below applies -#}
    {%- set has_xmin = adapter.get_columns_in_relation(this) | selectattr('name', 'equalto', 'build_xmin')
                       | list | length > 0 -%}
    {%- set marks = run_query("select coalesce(max(load_seq), 0), "
                              ~ ("max(build_xmin)" if has_xmin else "null") ~ " from " ~ this).rows[0] -%}
    {%- set watermark = marks[0] -%}
    {%- set prev_xmin = marks[1] -%}
{%- endif %}
{#- Columns of the landed row every outcome carries: passed along through the matching, extraction,
    conversion and classification instead of joining them back on lake_key. -#}
{%- set carried = ['source_format', 'shape_key', 'lake_lsn', 'committed_at', 'ingested_at'] %}
{#- ... and what the last step needs: the payload excerpt is made there, only for rows that are not
    events (the marts of quarantined and pending rows show it): made for every row (the payload as
    JSON text, 500 characters stored a row), it cost a 1M-row build 11 of 62 s and 300 MB. -#}
{%- set to_the_end = carried + ['row_created_at_text', 'undecodable', 'payload', 'raw_payload'] %}

with

{# Not materialized (it is read up to four times): filters on load_seq / lake_key reach the landing
    table's indexes, and only the rows a build needs are projected. Materialized, an incremental
    build copied the whole landing table (every row, all staging columns) first. #}
staged_all as not materialized (

    select * from {{ ref('stg_lake__transactions') }}

),

{% if is_incremental() -%}
candidate_keys as (

    -- new and changed landing rows
    select lake_key from staged_all where load_seq > {{ watermark }}
    union
    {% if prev_xmin is not none -%}
    -- rows whose image was written by a transaction still open (or not yet begun) at the previous
    -- build's snapshot: they may have committed after it, with any load_seq (commit order)
    select s.lake_key from staged_all as s where s.landed_xid >= {{ paynorm_sql_string(prev_xmin) }}::xid8
    {%- else -%}
    -- no commit horizon recorded yet (a table built before build_xmin existed): rows of an older
    -- load_seq that became visible after the last run
    select s.lake_key from staged_all as s
    where s.load_seq > {{ watermark }} - {{ var('late_arrival_lookback') }} and s.load_seq <= {{ watermark }}
      and not exists (select 1 from {{ this }} as t where t.lake_key = s.lake_key and t.load_seq = s.load_seq)
    {%- endif %}
    union
    {{ paynorm_reprocess_keys(this, rules, ruleset_hash) }}

),

{% endif -%}
{#- Not materialized: read by `matched` (live rows) and by the deleted rows below; materializing
    it would copy every landed row (payload and row image) to a temporary store first.
    Rows of one shape in a row: they walk the same rules, so the regular expressions of those rules
    (like_regex, substring, regexp_replace) stay in PostgreSQL's cache of compiled ones, which holds
    32; in landing order every row recompiled some. A full build sorts one range of shape keys per
    parallel worker (paynorm_shape_ranges): each range goes whole to one worker, which reads it in
    shape order, while the leader writes the table (the pre-hook keeps it out of the ranges). -#}
{%- set shape_ranges = ['true'] if is_incremental() else paynorm_shape_ranges(source('lake', 'lake_transactions'), 's') %}
{#- name -> expression: each range selects these, and the union takes them by name. row_data is
    only what the rules read of the row image (paynorm_row_image): the whole image, which holds the
    payload again, doubled what the sorts carry (the query at 1M rows: 17.4-18.5 s -> 15.6 s), and
    the excerpt of a row without a decoded payload takes the payload column here, before the sort. -#}
{%- set staged_columns = {
    'lake_key': 's.lake_key', 'load_seq': 's.load_seq', 'shape_key': 's.shape_key', 'payload': 's.payload',
    'payload_format': 's.payload_format', 'decode_error': 's.decode_error',
    'undecodable': paynorm_undecodable('s'),
    'row_data': paynorm_row_image(rules, 's.row_columns', 's.payload_key', 's.payload'),
    'raw_payload': 'case when s.payload is null then s.raw_payload end',
    'row_transaction_id': 's.row_transaction_id', 'row_merchant_id': 's.row_merchant_id',
    'row_merchant_name': 's.row_merchant_name', 'row_merchant_country': 's.row_merchant_country',
    'row_created_at_text': 's.row_created_at_text', 'is_deleted': 's.is_deleted',
    'source_format': 's.payload_format', 'lake_lsn': 's.lake_lsn', 'committed_at': 's.committed_at',
    'ingested_at': 's.loaded_at',
} %}
staged as not materialized (
    {%- for shape_range in shape_ranges %}
    {%- if not loop.first %}

    union all
    {%- endif %}

    select {% for name in staged_columns %}r.{{ name }}{{ ", " if not loop.last }}{% endfor %}
    from (
        select
            {%- for name, expression in staged_columns.items() %}
            {{ expression }} as {{ name }}{{ "," if not loop.last }}
            {%- endfor %}
        from staged_all as s
        where {{ shape_range }}
        {%- if is_incremental() %}
        -- an array, not a join: the planner cannot estimate a union of index ranges (it guessed 532k
        -- rows for 10k candidates at 1M landed rows) and hash-joined them to a scan of the whole landing
        -- (10 of 12 s); `= any(array(...))` is a primary-key probe per candidate key
        and s.lake_key = any(array(select k.lake_key from candidate_keys as k))
        {%- endif %}
        order by s.shape_key
    ) as r
    {%- endfor %}

),

{#- Every live row passes through ONE chain (match, extract, convert), matched or not: read twice
    (by the extraction and by the unmatched rows), `matched` would be materialized, i.e. every landed
    row with its payload and row image written to a temporary file (a fifth of the model's time with
    the rows in shape order). Rows no rule matched come out of the extraction with every extracted
    column NULL, and the conversion leaves them NULL (the few columns it defaults are masked in
    `normalized`). -#}
matched as (

    {{ paynorm_match_rows('staged', rules) }}

),

extracted as (

    {{ paynorm_extract('matched', rules, passthrough=to_the_end, keep_unmatched=true) }}

),

converted as (

    {{ paynorm_convert('extracted', passthrough=to_the_end) }}

),

normalized as (

    select
        c.lake_key, c.load_seq,
        case
            when c.mapping_id is null then {{ paynorm_unmatched_case('outcome', 'c.undecodable', 'ls.status') }}
            else c.outcome
        end as outcome,
        case
            when c.mapping_id is null then {{ paynorm_unmatched_case('reason', 'c.undecodable', 'ls.status') }}
            else c.invalid_reason
        end as reason,
        c.mapping_id, c.rule_hash, ls.status as llm_shape_status, c.normalizer, c.llm_model,
        c.provider, c.transaction_id, c.merchant_id, c.merchant_name, c.merchant_country,
        case when c.mapping_id is not null then c.event_type end as event_type,
        c.status, c.provider_status_raw, c.decline_category, c.response_code_raw,
        c.error_message, c.amount_minor, c.currency, c.currency_exponent, c.amount, c.amount_raw,
        c.amount_withheld_reason,
        c.payment_method, c.card_network, c.issuer_country, c.latency_ms,
        -- the lake row's created_at (stg_lake__transactions.row_created_at) is parsed only when the
        -- payload gives no event time: parsing costs a subtransaction per row
        case when c.mapping_id is not null then
            coalesce(
                c.event_at_parsed,
                {{ adapter.quote(var('paynorm_schema')) }}.try_timestamptz(c.row_created_at_text),
                c.committed_at
            )
        end as event_at,
        case when c.mapping_id is not null then c.is_test end as is_test,
        {%- for col in carried %}
        c.{{ col }},
        {%- endfor %}
        case when c.mapping_id is null or c.outcome <> 'event' then
            {{ paynorm_payload_excerpt('c.payload', 'c.raw_payload') }}
        end as payload_excerpt,
        -- the event's id, hashed here in the parallel workers rather than in the events' insert,
        -- which PostgreSQL runs in one process (1M events: ~1 s of md5 there)
        case when c.mapping_id is not null and c.outcome = 'event' then
            {{ paynorm_surrogate_key(['c.lake_key'], 'paynorm-event') }}
        end as event_id
    from converted as c
    left join {{ source('paynorm', 'llm_shapes') }} as ls
        on c.mapping_id is null and ls.shape_key = c.shape_key

    union all

    select
        s.lake_key, s.load_seq, 'deleted', null,
        null, null, null, null, null,
        null, null, null, null, null,
        null, null, null, null, null,
        null, null, null, null, null, null,
        null,
        null, null, null, null,
        null,
        null,
        {%- for col in carried %}
        s.{{ col }},
        {%- endfor %}
        {{ paynorm_payload_excerpt('s.payload', 's.raw_payload') }},
        null::uuid
    from staged as s
    where s.is_deleted

),

final as (

    select
        n.*,
        {{ paynorm_sql_string(ruleset_hash) }}::text as ruleset_hash,
        now() as normalized_at,
        -- the commit horizon of this build: every landing image written by a transaction older than
        -- it was visible to the build (the next build picks up what is at or above it)
        pg_snapshot_xmin(pg_current_snapshot())::text::bigint as build_xmin
    from normalized as n

)

select * from final
