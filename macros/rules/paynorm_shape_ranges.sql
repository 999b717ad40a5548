{#- Conditions that split the rows of `relation` into ranges of shape keys, one range per parallel
    worker the session can have (max_parallel_workers_per_gather), each about as many rows; ['true']
    (one range) with fewer than two workers or at parse time. `alias` is the alias the conditions
    use.

    Why: a build reads its rows in shape order so that consecutive rows walk the same rules and
    PostgreSQL's cache of 32 compiled regular expressions keeps their patterns (in landing order the
    model's query over 1M rows took 82 s instead of 48). One sorted stream is one process. A UNION
    ALL of sorted ranges is a Parallel Append whose branches each go whole to one worker: every
    worker then reads its own range in shape order, while the leader writes the table (the model
    switches the leader's own share off: 2 ranges for 2 workers took 23.2-23.7 s at 1M rows, 3
    ranges shared with the leader 25.1 s). Rows without a shape key go to the first range. -#}
{% macro paynorm_shape_ranges(relation, alias) -%}
  {%- if alias is not string or not alias -%}
    {{ exceptions.raise_compiler_error("paynorm_shape_ranges: alias must be a table alias") }}
  {%- endif -%}
  {%- if not execute -%}{{ return(['true']) }}{%- endif -%}
  {%- set workers = run_query("select current_setting('max_parallel_workers_per_gather')::int").columns[0].values()[0] -%}
  {%- if workers < 2 -%}{{ return(['true']) }}{%- endif -%}
  {%- set fractions = [] -%}
  {%- for k in range(1, workers) -%}
    {%- do fractions.append(k / workers) -%}
  {%- endfor -%}
  {#- the bounds from about 200k rows at most: a sample of the pages of a larger table (sorting every
      key of 100M rows would take longer than a small build) -#}
  {%- set size_query -%}
    select greatest(c.reltuples, 0)::bigint from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
    where n.nspname = {{ paynorm_sql_string(relation.schema) }} and c.relname = {{ paynorm_sql_string(relation.identifier) }}
  {%- endset -%}
  {%- set sizes = run_query(size_query).columns[0].values() -%}
  {%- set rows = sizes[0] if sizes else 0 -%}
  {%- set percent = 100 if rows <= 200000 else [200000 * 100 / rows, 0.01] | max -%}
  {%- set q -%}
    select distinct b from unnest((
        select percentile_disc(array[{{ fractions | join(', ') }}]::float8[]) within group (order by shape_key)
        from {{ relation }}{% if percent < 100 %} tablesample system ({{ percent }}){% endif %}
    )) as b where b is not null order by b
  {%- endset -%}
  {%- set bounds = run_query(q).columns[0].values() -%}
  {%- if bounds | length == 0 -%}{{ return(['true']) }}{%- endif -%}
  {%- set key = alias ~ '.shape_key' -%}
  {%- set conditions = ['(' ~ key ~ ' < ' ~ paynorm_sql_string(bounds[0]) ~ ' or ' ~ key ~ ' is null)'] -%}
  {%- for i in range(1, bounds | length) -%}
    {%- do conditions.append(key ~ ' >= ' ~ paynorm_sql_string(bounds[i - 1]) ~ ' and '
                             ~ key ~ ' < ' ~ paynorm_sql_string(bounds[i])) -%}
  {%- endfor -%}
  {%- do conditions.append(key ~ ' >= ' ~ paynorm_sql_string(bounds[-1])) -%}
  {{ return(conditions) }}
{%- endmacro %}
