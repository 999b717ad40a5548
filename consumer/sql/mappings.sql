-- paynorm normalization objects: mapping rules, LLM shape bookkeeping, safe casts used by dbt.
-- Idempotent: run every time by `paynorm mappings sync` / `paynorm init` / `paynorm transform`.
create schema if not exists paynorm;

-- One row per mapping rule (mappings/*.yml, LLM proposals, user edits). `rule` is the whole rule as
-- JSON (the YAML document); dbt compiles the ACTIVE rules into static SQL at execution time.
create table if not exists paynorm.mappings (
    id           text primary key check (id ~ '^[a-z0-9_]{3,64}$'),
    description  text not null default '',
    provider     text,                                    -- canonical provider when constant (informative)
    formats      text[] not null,
    match        text not null,                           -- SQL/JSON path filter on the payload
    priority     integer not null default 100,
    status       text not null default 'active' check (status in ('active', 'proposed', 'rejected')),
    origin       text not null default 'builtin' check (origin in ('builtin', 'llm', 'user')),
    rule         jsonb not null,                          -- the full rule document
    rule_hash    text not null,                           -- md5 of the canonical JSON of `rule`
    source_file  text,                                    -- mappings/<id>.yml for builtin rules
    model        text,                                    -- LLM model that proposed it (origin llm)
    prompt_hash  text,                                    -- hash of the prompt (origin llm)
    validation   jsonb,                                   -- validation report (errors, per-shape checks)
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index if not exists mappings_active on paynorm.mappings (priority desc, id) where status = 'active';
comment on table paynorm.mappings is
    'paynorm mapping rules (one payload shape -> canonical payment event); see mappings/README.md.';

-- Shapes the LLM step has tried. Rows with no rule whose shape is absent here are "pending LLM".
create table if not exists paynorm.llm_shapes (
    shape_key    text primary key,
    status       text not null check (status in ('mapped', 'unmappable', 'failed')),
    mapping_id   text,
    attempts     integer not null default 1,
    last_error   text,
    tried_at     timestamptz not null default now()
);
-- Model and prompt hash of the last attempt: an unmappable shape is tried again when either changes.
alter table paynorm.llm_shapes add column if not exists model text;
alter table paynorm.llm_shapes add column if not exists prompt_hash text;
alter table paynorm.llm_shapes add column if not exists row_count bigint;

-- Every HTTP request of the LLM step (consumer/llm/), whatever its outcome.
create table if not exists paynorm.llm_calls (
    id           bigserial primary key,
    run_id       text not null,                           -- one `paynorm llm` run
    shape_key    text not null,
    kind         text not null check (kind in ('propose', 'repair')),
    attempt      integer not null default 1,              -- 1 + retries after 429/5xx/timeouts
    model        text not null,
    prompt_hash  text not null,
    tokens_in    integer,
    tokens_out   integer,
    latency_ms   integer,
    outcome      text not null,                           -- accepted | invalid | malformed | refusal | not_payment |
                                                          -- rate_limited | server_error | timeout | connection_error | http_error
    error        text,
    mapping_id   text,
    called_at    timestamptz not null default now()
);
create index if not exists llm_calls_shape on paynorm.llm_calls (shape_key, called_at);
comment on table paynorm.llm_calls is 'One row per HTTP request of the paynorm LLM step (tokens, latency, outcome).';

-- ISO 8601 text -> timestamptz, NULL when unparseable (PostgreSQL 15 has no pg_input_is_valid).
-- No offset means UTC, whatever the session time zone. No exception block: the text is checked first
-- (the fields, the calendar, 24:00:00 and leap seconds, offsets up to 15:59, as PostgreSQL's own input
-- does) and cast only when the cast cannot fail, so the function is parallel safe and the build can
-- run in parallel workers (an exception block starts a subtransaction, which no process of a parallel
-- plan may do). tests/test_timestamps.py holds it to the cast inside an exception block, string for
-- string.
create or replace function paynorm.try_timestamptz(v text) returns timestamptz
language plpgsql stable parallel safe as $$
declare
    t text;
    rest text;
    y int; m int;
    secs int := 0;
    has_time boolean;
    sign_at int;
    tz_minutes text;
begin
    -- the usual forms, with fields that cannot be out of range (years 1000-2999, days up to 28, hours
    -- up to 23): cast at once
    if v ~ '^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]+)?)?(Z|[+-](0[0-9]|1[0-5])(:?[0-5][0-9])?)$' then
        return v::timestamptz;
    end if;
    if v ~ '^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]+)?)?)?$' then
        return v::timestamp at time zone 'UTC';
    end if;
    -- the rest: every field checked
    if v is null or v !~ '^[ \t\n\r\f\v]*[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?[ \t\n\r\f\v]*(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)?[ \t\n\r\f\v]*$' then
        return null;
    end if;
    t := ltrim(v, E' \t\n\r\f\x0B');
    y := substr(t, 1, 4)::int;
    m := substr(t, 6, 2)::int;
    if y < 1 or m < 1 or m > 12 or substr(t, 9, 2)::int not between 1 and (case
            when m = 2 then case when (y % 4 = 0 and y % 100 <> 0) or y % 400 = 0 then 29 else 28 end
            when m in (4, 6, 9, 11) then 30 else 31 end) then
        return null;
    end if;
    has_time := substr(t, 14, 1) = ':' and substr(t, 11, 1) in ('T', ' ');
    if has_time then
        if substr(t, 17, 1) = ':' then
            secs := substr(t, 18, 2)::int;
        end if;
        if substr(t, 15, 2)::int > 59 or secs > 60 then
            return null;
        end if;
        secs := secs + substr(t, 12, 2)::int * 3600 + substr(t, 15, 2)::int * 60;
        -- 23:59:60 (a leap second) and 24:00:00 are valid, nothing after the end of the day is; the
        -- fraction (rounded to microseconds as PostgreSQL rounds it) only matters there
        if secs >= 86399 and secs * 1000000::float8 + (case when substr(t, 20, 1) = '.'
                then round(('0' || substring(t from '\.[0-9]+'))::float8 * 1000000) else 0 end) > 86400000000::float8 then
            return null;
        end if;
    end if;
    if substr(t, 11, 1) = '-' then  -- a date glued to a negative offset reads as a malformed date
        return null;
    end if;
    rest := substr(t, 11);  -- the time and the offset: the only + or - is the offset's
    sign_at := greatest(strpos(rest, '+'), strpos(rest, '-'));
    if sign_at > 0 then
        tz_minutes := substr(rest, sign_at + case when substr(rest, sign_at + 3, 1) = ':' then 4 else 3 end, 2);
        if substr(rest, sign_at + 1, 2)::int > 15
                or (length(tz_minutes) = 2 and translate(tz_minutes, '0123456789', '') = '' and tz_minutes::int > 59) then
            return null;
        end if;
    end if;
    if has_time and (sign_at > 0 or right(rtrim(t, E' \t\n\r\f\x0B'), 1) in ('Z', 'z')) then
        return v::timestamptz;
    end if;
    return v::timestamp at time zone 'UTC';
end $$;

-- The hash of the active rule set: the ONE definition, used by the dbt models (which rows to
-- re-normalize when it changes) and by Python alike.
create or replace function paynorm.active_ruleset_hash() returns text
language sql stable as $$
    select md5(coalesce(string_agg(id || ':' || rule_hash, ',' order by id collate "C"), ''))
    from paynorm.mappings where status = 'active'
$$;
