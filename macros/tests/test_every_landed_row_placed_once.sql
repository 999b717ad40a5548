{#- Conservation law: every live (not deleted) landed row is in exactly one of the events (`model`),
    the quarantine and the pending rows; nothing else is there. Fails with the offending keys.
    It checks what the build saw: with `normalized` (the model that records each build's commit
    horizon, build_xmin), landing images written at or after the last build's horizon (a writer
    that keeps landing while the build runs) are left out on both sides; they belong to the next
    build. -#}
{% test every_landed_row_placed_once(model, landing, quarantine, pending, normalized=none, key='lake_key') %}
  {%- if landing is none or quarantine is none or pending is none -%}
    {{ exceptions.raise_compiler_error("every_landed_row_placed_once: give landing, quarantine and pending") }}
  {%- endif %}
with

{% if normalized is not none -%}
horizon as (
    select max(build_xmin) as xmin from {{ normalized }}
),

newer as (
    -- images the last build could not have seen
    select l.{{ key }} as lake_key from {{ landing }} as l, horizon as h
    where h.xmin is not null and l.landed_xid >= h.xmin::text::xid8
),

{% endif -%}
live as not materialized (
    select {{ key }} as lake_key from {{ landing }} where not deleted
),

events as not materialized (
    select {{ key }} as lake_key from {{ model }}
),

others as not materialized (
    select {{ key }} as lake_key, 'quarantine' as place from {{ quarantine }}
    union all
    select {{ key }}, 'pending' from {{ pending }}
),

{#- The keys that break the law, found by anti-joins and the small side's joins, which PostgreSQL
    runs in parallel workers (a count of placements per key over every row, joined in full to the
    landing, a join PostgreSQL 15 runs in one process: 2.7-3.1 s against 1.9-2.0 s at 1M rows). A key
    twice in `model` is not looked for: the events' unique index on lake_key refuses it; nor one
    twice among the quarantined and pending rows: both are rows of the normalized model, unique on
    lake_key, one outcome each. -#}
wrong as (
    -- live and placed nowhere
    select l.lake_key from live as l
    where not exists (select 1 from events as e where e.lake_key = l.lake_key)
      and not exists (select 1 from others as o where o.lake_key = l.lake_key)
    union all
    -- placed, and not a live landed row
    select e.lake_key from events as e where not exists (select 1 from live as l where l.lake_key = e.lake_key)
    union all
    select o.lake_key from others as o where not exists (select 1 from live as l where l.lake_key = o.lake_key)
    union all
    -- placed twice
    select e.lake_key from events as e join others as o on o.lake_key = e.lake_key
),

failing as (
    select distinct lake_key from wrong
)

select
    f.lake_key,
    p.placements,
    p.places,
    exists (select 1 from live as l where l.lake_key = f.lake_key) as is_live
from failing as f
-- the places of a failing key, read once: its count and its list
cross join lateral (
    select count(*) as placements, string_agg(x.place, ',' order by x.place) as places
    from (select 'event' as place from events as e where e.lake_key = f.lake_key
          union all
          select o.place from others as o where o.lake_key = f.lake_key) as x
) as p
{%- if normalized is not none %}
where f.lake_key not in (select lake_key from newer)
{%- endif %}
{% endtest %}
