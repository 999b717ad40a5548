-- paynorm warehouse objects owned by the consumer. Idempotent: `paynorm init` runs it every time.
create schema if not exists paynorm;
create schema if not exists raw;

-- Taken at every write of a landing row; dbt incremental models pick up rows by load_seq.
create sequence if not exists raw.load_seq;

-- The landing contract: one row per lake row (latest image), keyed by the lake primary key.
create table if not exists raw.lake_transactions (
    lake_key        text primary key,
    row_data        jsonb,
    payload         jsonb,
    payload_format  text not null
        check (payload_format in ('json', 'xml', 'csv', 'nvp', 'text', 'empty')),
    decode_error    text,
    shape_key       text,
    op              char(1) not null check (op in ('I', 'U', 'D', 'T', 'S', 'P', 'F')),
    deleted         boolean not null default false,
    source          text not null,
    lake_lsn        pg_lsn,
    lake_xid        bigint,
    committed_at    timestamptz,
    loaded_at       timestamptz not null default clock_timestamp(),
    load_seq        bigint not null default nextval('raw.load_seq')
);
create index if not exists lake_transactions_load_seq on raw.lake_transactions (load_seq);
-- The transaction that wrote the row's current image: dbt picks up landed rows by COMMIT order with
-- it (a row written by a transaction that had not committed when the last build took its snapshot
-- has landed_xid >= that snapshot's xmin), so a landing transaction that commits late is never
-- skipped, whatever load_seq it took. The default stamps inserts, a trigger every update, whoever
-- writes (a BEFORE INSERT trigger would also fire for every conflicting row of an upsert: measured
-- 16% slower on a 200k-row upsert, the update trigger 3%).
-- (ALTER TABLE, even one that changes nothing, waits for every reader of the landing, e.g. a running
-- build: init runs at every consumer start, so it alters only what is missing.)
do $$
begin
    if not exists (select 1 from pg_attribute where attrelid = 'raw.lake_transactions'::regclass
                   and attname = 'landed_xid' and not attisdropped) then
        alter table raw.lake_transactions add column landed_xid xid8 default pg_current_xact_id();
    end if;
end
$$;
create index if not exists lake_transactions_landed_xid on raw.lake_transactions (landed_xid);
create or replace function raw.stamp_landed_xid() returns trigger language plpgsql as $$
begin
    new.landed_xid := pg_current_xact_id();
    return new;
end
$$;
create or replace trigger lake_transactions_stamp_landed_xid
    before update on raw.lake_transactions
    for each row execute function raw.stamp_landed_xid();
create index if not exists lake_transactions_shape_key on raw.lake_transactions (shape_key);
-- The tombstones (lake deletes): a build reads them apart from the live rows, and without this
-- small index that meant a scan of the whole landing for the few deleted rows.
create index if not exists lake_transactions_deleted on raw.lake_transactions (lake_key) where deleted;
-- A row image with its payload passes PostgreSQL's 2 kB TOAST threshold about one time in five, and
-- every jsonpath of a build then decompresses the value again: lz4 decompresses several times faster
-- than the default pglz (a 1M-row build, its rows rewritten with lz4: model 71.8 s -> 62.7 s) and
-- compresses faster at landing.
-- Only new images are written with it. Altered only when not lz4 already (see landed_xid above); a
-- server built without lz4 keeps pglz.
do $$
begin
    if exists (select 1 from pg_attribute
               where attrelid = 'raw.lake_transactions'::regclass and attname in ('payload', 'row_data')
                 and attcompression is distinct from 'l') then
        alter table raw.lake_transactions
            alter column payload set compression lz4, alter column row_data set compression lz4;
    end if;
exception when feature_not_supported or insufficient_privilege then
    null;
end
$$;
-- Rows up to 8 kB are not compressed at all (toast_tuple_target; PostgreSQL compresses a row's
-- largest values once it passes 2 kB by default, a third of landed rows here): a build reads the
-- payload a dozen times a row, and each read of a compressed value decompresses it again (1M rows:
-- the model's query 25.5-25.9 -> 22.4-22.9 s on the same rows, the landing 1.58 -> 1.89 GB). Larger rows are
-- still compressed.
-- Only new images are written this way; set only when not already (see landed_xid above).
do $$
begin
    if not exists (select 1 from pg_class
                   where oid = 'raw.lake_transactions'::regclass
                     and 'toast_tuple_target=8160' = any(coalesce(reloptions, '{}'))) then
        alter table raw.lake_transactions set (toast_tuple_target = 8160);
    end if;
exception when insufficient_privilege then
    null;
end
$$;
-- The payload column's name when its value is the decoded payload itself (a JSON object in a
-- json/jsonb lake column: most rows): row_data then leaves that column out, so the payload is stored,
-- written to the WAL and read by a build once, not twice (a 100k-row COPY into this table with its
-- indexes: 3.1-3.4 s with the payload in both columns, 1.8-2.1 s with it in one).
-- raw.row_image() gives the full image back. Older rows have none and row_data whole.
do $$
begin
    if not exists (select 1 from pg_attribute where attrelid = 'raw.lake_transactions'::regclass
                   and attname = 'payload_key' and not attisdropped) then
        alter table raw.lake_transactions add column payload_key text;
    end if;
end
$$;
comment on table raw.lake_transactions is
    'paynorm landing: one row per lake row, latest image; written only by paynorm sources.';

-- The lake row's full column image from a landing row: row_data with the payload column put back
-- when payload_key names it. The dbt models call it too (macro paynorm_full_row_image). jsonb_set,
-- not `|| jsonb_build_object(...)` (the same object): PostgreSQL inlines this function into the
-- query only without that VARIADIC "any" call, so a build pays no function call per row.
create or replace function raw.row_image(row_data jsonb, payload_key text, payload jsonb)
returns jsonb language sql immutable parallel safe as $$
    select case when payload_key is null then row_data else jsonb_set(row_data, array[payload_key], payload) end
$$;

-- Position of each CDC slot in the warehouse, written in the same transaction as the data it covers.
create table if not exists paynorm.replication_state (
    slot_name          text primary key,
    lake_table         text not null,
    applied_lsn        pg_lsn not null,          -- end LSN (C.nextlsn) of the last applied lake transaction
    confirmed_lsn      pg_lsn,                   -- last position confirmed to the lake
    snapshot_lsn       pg_lsn,                   -- the slot's consistent point when the snapshot started
    snapshot_done      boolean not null default false,
    snapshot_last_key  text,                     -- keyset cursor of an unfinished snapshot
    snapshot_rows      bigint not null default 0,
    snapshot_total     bigint,
    rows_applied       bigint not null default 0,
    last_commit_at     timestamptz,              -- lake commit time of the last applied transaction
    owner_token        text,                     -- fencing nonce of the consumer that holds the slot
    updated_at         timestamptz not null default now()
);
-- A slot this warehouse is about to create on the lake, recorded before it is created: a crash (or a lake
-- shutdown) between creating the slot and writing its state above leaves this row, so the next run knows
-- the slot it finds is its own half-made one (no change was read from it) and creates it again.
create table if not exists paynorm.slot_intents (
    slot_name   text primary key,
    lake_table  text not null,
    created_at  timestamptz not null default now()
);
-- The lake table's identity as the CDC consumer last checked it (OID, row type version, payload column):
-- a rename, a drop and re-create or a payload column gone stops the consumer before it confirms past it.
alter table paynorm.replication_state add column if not exists lake_relation jsonb;
-- How far behind the consumer is, as it last said (a slot it streams from cannot be peeked by others):
-- the lake commit time of the oldest transaction received and not yet applied (null: all applied),
-- and when it said so.
alter table paynorm.replication_state add column if not exists behind_since timestamptz;
alter table paynorm.replication_state add column if not exists lag_checked_at timestamptz;

-- The files source (`paynorm load`): one row per file key, written in the same transaction as the file's
-- records. A file is loaded at most once per content version (size + ETag on S3, size + mtime/sha256 locally).
create table if not exists paynorm.processed_files (
    key            text primary key,          -- s3://bucket/key, or the absolute local path
    store          text not null,             -- s3 | local
    size           bigint,                    -- bytes, as listed
    etag           text,                      -- S3 ETag as listed (quotes stripped); null for local files
    mtime          timestamptz,               -- S3 LastModified / local mtime, as listed
    sha256         text,                      -- of the content, computed while reading it
    format         text,                      -- json | jsonl | csv | parquet
    status         text not null check (status in ('processing', 'completed', 'failed')),
    records        bigint,                    -- records read from the file
    rows_landed    bigint,                    -- landing rows written (new or changed)
    bad_records    bigint,                    -- records landed with a decode error
    tombstoned     bigint,                    -- records of the previous version no longer in the file
    error          text,                      -- why the file failed
    error_code     text,                      -- not_utf8, bad_json, ragged_csv, not_parquet, empty, too_large, io...
    attempts       integer not null default 0,
    first_seen_at  timestamptz not null default now(),
    started_at     timestamptz,               -- last load started
    finished_at    timestamptz,               -- last load finished (completed or failed)
    duration_ms    bigint,
    updated_at     timestamptz not null default now()
);
-- Finds the records of one file (to tombstone those a new version dropped) without scanning CDC rows.
create index if not exists lake_transactions_file_source on raw.lake_transactions (source)
    where source like 'file:%';
