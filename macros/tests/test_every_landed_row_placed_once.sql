{#- Conservation law: every live (not deleted) landed row is in exactly one of the events (`model`),
    the quarantine and the pending rows; nothing else is there. Fails with the offending keys. -#}
{% test every_landed_row_placed_once(model, landing, quarantine, pending, key='lake_key') %}
  {%- if landing is none or quarantine is none or pending is none -%}
    {{ exceptions.raise_compiler_error("every_landed_row_placed_once: give landing, quarantine and pending") }}
  {%- endif %}
with

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
where l.lake_key is null or coalesce(c.placements, 0) <> 1
{% endtest %}
