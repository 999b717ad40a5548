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
live as (
    select {{ key }} as lake_key from {{ landing }} where not deleted
),

placed as (
    select {{ key }} as lake_key, 'event' as place from {{ model }}
    union all
    select {{ key }}, 'quarantine' from {{ quarantine }}
    union all
    select {{ key }}, 'pending' from {{ pending }}
),

counted as (
    select lake_key, count(*) as placements, string_agg(place, ',' order by place) as places
    from placed
    group by lake_key
)

select
    coalesce(l.lake_key, c.lake_key) as lake_key,
    coalesce(c.placements, 0) as placements,
    c.places,
    l.lake_key is not null as is_live
from live as l
full outer join counted as c on c.lake_key = l.lake_key
where (l.lake_key is null or coalesce(c.placements, 0) <> 1)
{%- if normalized is not none %}
  and coalesce(l.lake_key, c.lake_key) not in (select lake_key from newer)
{%- endif %}
{% endtest %}
