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
-- No offset means UTC, whatever the session time zone. Parallel unsafe: the exception block starts a
-- subtransaction, which neither parallel workers (found by a 20k-row demo) nor a leader running a
-- parallel plan may do (found at 100k rows: "restricted" was not enough).
create or replace function paynorm.try_timestamptz(v text) returns timestamptz
language plpgsql stable parallel unsafe as $$
begin
    if v is null or v !~ '^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)?\s*$' then
        return null;
    end if;
    if v ~ '(Z|z|[+-]\d{2}(:?\d{2})?)\s*$' and v ~ '[T ]\d{2}:\d{2}' then
        return v::timestamptz;
    end if;
    return v::timestamp at time zone 'UTC';
exception when others then
    return null;
end $$;

-- The hash of the active rule set: the ONE definition, used by the dbt models (which rows to
-- re-normalize when it changes) and by Python alike.
create or replace function paynorm.active_ruleset_hash() returns text
language sql stable as $$
    select md5(coalesce(string_agg(id || ':' || rule_hash, ',' order by id collate "C"), ''))
    from paynorm.mappings where status = 'active'
$$;
