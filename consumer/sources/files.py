"""The files source (`paynorm load`): JSON / JSONL / CSV / Parquet files from a folder or an S3 bucket.

The S3 data-lake variant (the lake exported as files), landing into the same ``raw.lake_transactions`` as the CDC consumer
so normalization, the LLM step and the marts work unchanged.

* Discovery: a local folder (recursive; hidden files skipped) or ``s3://bucket/prefix`` (boto3, the
  optional extra ``paynorm[s3]``; endpoint, region and credentials from the standard AWS variables,
  plus ``endpoint_url`` for MinIO and other S3-compatible stores). Keys are listed in lexicographic
  order, filtered by an extra prefix and an fnmatch pattern on the path relative to the root. JSON,
  JSON Lines and CSV may be gzip-compressed (``x.jsonl.gz``): decompressed while streaming, the size
  limit applying to the compressed and to the decompressed bytes.
* Symbolic links are never followed, so nothing outside the folder is ever read: a link (to a file
  or a folder) whose target is outside the folder fails with its reason in ``processed_files``; a link
  inside the folder is skipped (its target is loaded under its own path, once). Files are opened
  component by component without following any link, so a path swapped for a link after the
  listing is refused too.
* Bookkeeping: ``paynorm.processed_files``, one row per file key (``s3://bucket/key`` or the absolute
  local path). A file is loaded at most once per content version: unchanged files (same size and
  ETag on S3; same size and mtime locally, confirmed by sha256 when the mtime is "racy") are skipped
  without being read. The same key with new content is loaded again: its records replace the older
  ones and the records of the old version that vanished are tombstoned (only rows that file owns).
  A failed file stays a failure of every pass (exit 1) until it changes, is fixed or removed.
* Atomicity: a file's records and its ``completed`` tracking row commit in ONE warehouse
  transaction. Records are streamed into a temp table in chunks (memory stays flat), then one
  set-based upsert (the landing's own) runs and the transaction commits once; a crash mid-file
  leaves nothing half-loaded (the tracking row stays ``processing`` and the file is loaded again).
* Records: each record becomes one landed row, ``op = 'F'``, ``source = 'file:<key>'``, lake key
  ``<key>#<record index>`` (0-based) unless the record is a lake envelope carrying an ``id`` (then
  that id, so a record seen both in the CDC lake and in a file is one row; the landing's source
  precedence keeps the row another source owns, unless the files are declared the lake's own export).
  Envelopes (``id/data/merchant/transactional_id``, the lake's columns) are kept as the row image; a
  bare provider payload becomes the ``data`` of an envelope with null ``id``, ``merchant`` and
  ``transactional_id``. Bad single records (a JSONL line that is not JSON, a payload that does not
  decode) land with their decode error; bad files (not UTF-8, truncated JSON, ragged CSV, not
  Parquet, not gzip, empty, too large) fail with a clear error in ``processed_files`` and the log, and
  the other files go on.
* Connection problems (warehouse, S3) go through the one retry policy (consumer/retry.py): a
  permanent one (bad DSN, authentication, privilege, no such bucket) fails at once with exit 4, a
  transient one is retried with back-off until the deadline (``retry_for``), then exit 1.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TextIO

import psycopg

from .. import landing
from ..ops import metrics
from ..ops.progress import Progress as _Progress
from ..ops.progress import human_bytes
from ..errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, PaynormError, TransientError, require_dsn
from ..faults import crashpoint
from ..jsonutil import dumps_exact
from ..landing import (  # the landing's own staging table and upsert: files land exactly like CDC rows
    PAYLOAD_COLUMN_CANDIDATES,
    STAGED_COLUMNS,
    STAGING_DDL,
    LandingBatch,
    LandingRow,
    init_warehouse,
    staged_records,
)
from ..secrets import redact_dsn
from ..settings import Settings
from . import run_source

log = logging.getLogger(__name__)

FORMATS = ("json", "jsonl", "csv", "parquet")
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}
#: Compressed files: the compression's extension follows the format's (``x.jsonl.gz``).
COMPRESSIONS = {".gz": "gzip"}

#: The lake's columns: a record whose keys are all among them (with a payload column and at least one
#: other column besides ``id``) is a lake envelope and kept as the row image.
LAKE_COLUMNS = frozenset({"id", "data", "transaction_data", "payload", "merchant", "transactional_id",
                          "created_at", "processed", "processed_at", "source"})
#: Envelope columns that hold JSON; in CSV and Parquet they usually arrive as JSON text, parsed here.
_JSON_COLUMNS = frozenset({"data", "transaction_data", "payload", "merchant"})

# Exit codes (consumer/errors.py): EXIT_OK; EXIT_FAILED when a file failed or stays failed, or the store
# or the warehouse stayed unreachable past the retry deadline; EXIT_CONFIG for a permanent problem.

_READ_CHUNK = 1 << 20
#: The longest single record (a JSON Lines or CSV line, an element of a JSON array, a single JSON
#: value) held in memory: a longer one fails the file instead of growing without bound (a gzip bomb
#: holding one endless line). PostgreSQL's jsonb could not hold much more anyway.
MAX_RECORD_CHARS = 32 << 20
_RACY_SECONDS = 2.0  # a local mtime this close to the last read may hide a same-size rewrite: hash it
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_SURROGATES = re.compile("[\ud800-\udfff]")
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
_WS = re.compile(r"[ \t\r\n]*")
_NUMBER_TAIL = re.compile(r"[0-9eE+\-.]*")
_PG_MAX_WEIGHT_DIGITS = 131_072
_PG_MAX_SCALE = 16_383
_MAX_NESTING = 400

# Failures worth retrying while the file is unchanged (the others wait for a new version of the file).
_RETRYABLE = frozenset({"io", "missing_dependency"})
# S3 error codes that retrying cannot fix: the bucket, the credentials or the permissions are wrong.
_S3_PERMANENT = frozenset({"AccessDenied", "AllAccessDisabled", "NoSuchBucket", "InvalidBucketName",
                           "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                           "AuthorizationHeaderMalformed", "AccountProblem", "InvalidObjectState"})


class FileError(Exception):
    """The file cannot be loaded (its content, its size, reading it); the other files go on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreError(RuntimeError):
    """The store could not be listed (S3 unreachable, no permission, missing folder). ``permanent``:
    retrying cannot help (no such bucket, access denied); else it is retried to the deadline."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent

    def classified(self) -> PaynormError:
        return ConfigError(str(self)) if self.permanent else TransientError(str(self))


# -- the stores -----------------------------------------------------------------------------------


@dataclass
class FileRef:
    """One file as listed: enough to decide whether it changed without reading it."""

    key: str  # s3://bucket/key, or the absolute local path
    size: int
    mtime: datetime
    fmt: str | None  # None only for a refused link to a folder
    etag: str | None = None  # S3 only, quotes stripped
    location: str = ""  # the S3 object key, or the local path
    compression: str | None = None  # gzip, or None
    refused: str | None = None  # a local symbolic link that is not followed: why (the file fails with it)


def _resolve_format(name: str, fmt: str) -> tuple[str | None, str | None]:
    """(format, compression) of a file called ``name``; format None when it is not to be loaded."""
    stem, ext = os.path.splitext(name)
    compression = COMPRESSIONS.get(ext.lower())
    if compression is not None:
        name = stem
    if fmt != "auto":
        return fmt, compression
    return EXTENSIONS.get(os.path.splitext(name)[1].lower()), compression


class _Store:
    kind = ""
    label = ""
    links_skipped = 0  # symbolic links inside a local folder, not followed, in the last listing

    def __init__(self, prefix: str, pattern: str, fmt: str) -> None:
        self.prefix = prefix
        self.pattern = pattern
        self.fmt = fmt

    def _wanted(self, rel: str) -> tuple[str, str | None] | None:
        """(format, compression) of a file at ``rel`` (relative to the root) when it is to be loaded."""
        if self.prefix and not rel.startswith(self.prefix):
            return None
        if self.pattern and not fnmatch.fnmatchcase(rel, self.pattern):
            return None
        fmt, compression = _resolve_format(rel, self.fmt)
        return None if fmt is None else (fmt, compression)

    def pages(self, size: int = 1000) -> Iterator[list[FileRef]]:
        raise NotImplementedError

    @contextmanager
    def open(self, ref: FileRef) -> Iterator[BinaryIO]:
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        pass


def _mtime(st: os.stat_result) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=st.st_mtime_ns // 1000)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO named like a data file must not block the loader (it is refused after fstat).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class LocalStore(_Store):
    """A folder (or one file). Symbolic links are never followed: see the module docstring."""

    kind = "local"

    def __init__(self, root: str, prefix: str = "", pattern: str = "", fmt: str = "auto") -> None:
        super().__init__(prefix, pattern, fmt)
        self.root = Path(root).expanduser().resolve()  # the root itself is the operator's choice: resolved
        self.label = str(self.root)
        if not self.root.exists():
            raise StoreError(f"{self.root}: no such file or folder", permanent=True)
        self.single = not self.root.is_dir()
        self.base = self.root.parent if self.single else self.root

    def _inside(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def _walk_error(self, e: OSError) -> None:
        if e.filename is not None and Path(e.filename) == self.root:
            raise StoreError(f"cannot list {self.root}: {e.strerror}",
                             permanent=isinstance(e, PermissionError)) from e
        log.warning("cannot list %s: %s; its files are not loaded in this pass", e.filename, e.strerror)

    def _walk(self) -> Iterator[tuple[str, os.stat_result, bool]]:
        """(path relative to the root, lstat, is a link to a folder) of every candidate, in order."""
        if self.single:
            yield self.root.name, self.root.lstat(), False
            return
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=self._walk_error):
            here = Path(dirpath)
            rel_dir = here.relative_to(self.root).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            entries: list[tuple[str, bool]] = []
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                if (here / d).is_symlink():  # os.walk would not descend, but it must be said
                    entries.append((d, True))
                else:
                    keep.append(d)
            dirnames[:] = keep
            entries += [(f, False) for f in filenames if not f.startswith(".")]
            for name, is_dir_link in sorted(entries):
                try:
                    st = (here / name).lstat()
                except OSError:  # vanished between the walk and the stat
                    continue
                if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
                    yield prefix + name, st, is_dir_link
                else:
                    log.debug("%s: not a regular file, skipped", here / name)

    def _link_refusal(self, path: Path, to_folder: bool) -> tuple[str | None, bool]:
        """(reason the link at ``path`` fails the file, or None; True when it is skipped instead)."""
        target = Path(os.path.realpath(path))  # never raises: a loop or a dangling link resolves somewhere
        what = "a folder" if to_folder else "a file"
        if self._inside(target):
            log.debug("%s: symbolic link to %s inside the folder, not followed (loaded under its own path)",
                      path, target)
            return None, True
        return (f"symbolic link to {what} outside {self.root} ({target}): not followed, never read; "
                f"copy the file into the folder instead"), False

    def pages(self, size: int = 1000) -> Iterator[list[FileRef]]:
        page: list[FileRef] = []
        self.links_skipped = 0
        for rel, st, is_dir_link in self._walk():
            path = self.base / rel
            if is_dir_link:  # only the prefix filter applies: the files under it are never seen
                wanted: tuple[str | None, str | None] | None = (
                    (None, None) if not self.prefix or (rel + "/").startswith(self.prefix)
                    or self.prefix.startswith(rel + "/") else None)
            else:
                wanted = self._wanted(rel)
            if wanted is None:
                continue
            refused = None
            if stat.S_ISLNK(st.st_mode):
                refused, skipped = self._link_refusal(path, is_dir_link)
                if skipped:
                    self.links_skipped += 1
                    continue
            page.append(FileRef(str(path), st.st_size, _mtime(st), wanted[0], None, str(path), wanted[1], refused))
            if len(page) >= size:
                yield page
                page = []
        if page:
            yield page

    def _open_fd(self, ref: FileRef) -> int:
        """A descriptor of ``ref``'s file, opened from the root one component at a time, following no
        symbolic link anywhere (a folder or the file swapped for a link after the listing is refused)."""
        parts = Path(ref.location).relative_to(self.base).parts
        try:
            fd = os.open(self.base, _DIR_FLAGS)
        except OSError as e:
            raise FileError("io", f"cannot open {self.base}: {e.strerror}") from e
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    nfd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        try:
                            is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                        except OSError:
                            is_link = False
                        if is_link:
                            where = "/".join(parts[:i + 1])
                            raise FileError("symlink", f"{where} became a symbolic link after the listing: "
                                                       f"not followed, never read") from e
                    if e.errno == errno.ENOENT:
                        raise _Vanished(f"{ref.key} disappeared since it was listed") from e
                    raise FileError("io", f"cannot open: {e.strerror}") from e
                os.close(fd)
                fd = nfd
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileError("not_regular", "not a regular file (a FIFO, a socket or a device): not read")
            os.set_blocking(fd, True)
            result, fd = fd, -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    @contextmanager
    def open(self, ref: FileRef) -> Iterator[BinaryIO]:
        f = os.fdopen(self._open_fd(ref), "rb")
        with f:
            yield f

    @contextmanager
    def seekable(self, ref: FileRef, meter_factory: Callable[[BinaryIO], _Meter]) -> Iterator[BinaryIO]:
        """The file, for pyarrow to seek in; the content is hashed (one sequential read) first. pyarrow
        gets the descriptor opened here, never the path (which it would open following links)."""
        with self.open(ref) as f:
            meter = meter_factory(f)
            while meter.read(_READ_CHUNK):
                pass
            f.seek(0)
            yield f


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client: credentials and region from the standard AWS variables and config files;
    ``endpoint_url`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) for S3-compatible stores."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise ConfigError("s3:// sources need boto3: pip install 'paynorm[s3]'") from e
    custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}, "connect_timeout": 10,
                              "read_timeout": 60}
    if custom:  # MinIO and most S3-compatible stores want path-style addressing
        kwargs["s3"] = {"addressing_style": "path"}
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=Config(**kwargs))


class S3Store(_Store):
    kind = "s3"

    def __init__(self, uri: str, prefix: str = "", pattern: str = "", fmt: str = "auto",
                 endpoint_url: str | None = None, client: Any = None) -> None:
        bucket, _, base = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ConfigError(f"{uri}: expected s3://bucket/prefix")
        super().__init__(prefix, pattern, fmt)
        self.bucket = bucket
        self.base = base
        self.label = uri
        self.client = client or s3_client(endpoint_url)

    def pages(self, size: int = 1000) -> Iterator[list[FileRef]]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = self.base
        list_prefix = (base.rstrip("/") + "/" + self.prefix if base else self.prefix) if self.prefix else base
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for resp in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix,
                                           PaginationConfig={"PageSize": min(size, 1000)}):
                page = []
                for obj in resp.get("Contents") or []:
                    key = obj["Key"]
                    if key.endswith("/"):  # a "folder" marker
                        continue
                    rel = key[len(base):].lstrip("/") if base else key
                    if any(part.startswith(".") for part in rel.split("/")):
                        continue
                    wanted = self._wanted(rel)
                    if wanted is None:
                        continue
                    mtime = obj["LastModified"]
                    if mtime.tzinfo is None:
                        mtime = mtime.replace(tzinfo=timezone.utc)
                    page.append(FileRef(f"s3://{self.bucket}/{key}", int(obj["Size"]), mtime, wanted[0],
                                        obj.get("ETag", "").strip('"') or None, key, wanted[1]))
                if page:
                    yield page
        except ClientError as e:
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            permanent = err.get("Code", "") in _S3_PERMANENT or status in (401, 403, 404)
            raise StoreError(f"cannot list {self.label}: {e}", permanent=permanent) from e
        except BotoCoreError as e:
            from botocore.exceptions import NoCredentialsError, NoRegionError, ParamValidationError, \
                PartialCredentialsError

            permanent = isinstance(e, (NoCredentialsError, PartialCredentialsError, NoRegionError,
                                       ParamValidationError))
            raise StoreError(f"cannot list {self.label}: {e}", permanent=permanent) from e

    @contextmanager
    def open(self, ref: FileRef) -> Iterator[BinaryIO]:
        from botocore.exceptions import BotoCoreError, ClientError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": ref.location}
        if ref.etag:
            args["IfMatch"] = f'"{ref.etag}"'  # the version we listed, or 412: it changed, next pass sees it
        try:
            resp = self.client.get_object(**args)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                raise _Vanished(f"{ref.key} changed or disappeared since it was listed ({code})") from e
            raise FileError("io", f"cannot download: {e}") from e
        except BotoCoreError as e:
            raise FileError("io", f"cannot download: {e}") from e
        body = resp["Body"]
        try:
            yield _BotoBody(body)
        finally:
            body.close()

    @contextmanager
    def seekable(self, ref: FileRef, meter_factory: Callable[[BinaryIO], _Meter]) -> Iterator[str]:
        """Parquet needs random access: stream the object into a temp file (hashing it), then read that."""
        with tempfile.NamedTemporaryFile(prefix="paynorm-", suffix=".parquet") as tmp:
            with self.open(ref) as body:
                meter = meter_factory(body)
                while chunk := meter.read(_READ_CHUNK):
                    tmp.write(chunk)
            tmp.flush()
            yield tmp.name

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # pragma: no cover - older botocore has no close()
            pass


class _Vanished(Exception):
    """The object changed or was deleted between listing and download: the next pass deals with it."""


class _BotoBody(io.RawIOBase):
    """botocore's StreamingBody as a raw binary stream; transport errors become FileError('io')."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self.body.read(len(b))
        except Exception as e:  # urllib3 / botocore read errors
            raise FileError("io", f"download interrupted: {e}") from e
        n = len(data)
        b[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        try:
            return self.body.read(None if size is None or size < 0 else size)
        except Exception as e:
            raise FileError("io", f"download interrupted: {e}") from e


def open_store(uri: str, *, prefix: str = "", pattern: str = "", fmt: str = "auto",
               endpoint_url: str | None = None) -> _Store:
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: use auto, {', '.join(FORMATS)}")
    if uri.startswith("s3://"):
        return S3Store(uri, prefix, pattern, fmt, endpoint_url)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"{uri}: expected a local folder or s3://bucket/prefix")
    return LocalStore(uri[len("file://"):] if uri.startswith("file://") else uri, prefix, pattern, fmt)


# -- reading: a metered byte stream, then records ---------------------------------------------------


class _Meter(io.RawIOBase):
    """Counts and hashes the bytes read, enforces the size limit and drives the progress bar."""

    def __init__(self, raw: Any, limit: int, progress: _Progress | None = None) -> None:
        self.raw = raw
        self.limit = limit
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        if n:
            b[:n] = data
            self._count(data)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else _READ_CHUNK)
        if data:
            self._count(data)
        return data

    def _count(self, data: bytes) -> None:
        self.sha.update(data)
        self.bytes += len(data)
        if self.bytes > self.limit:
            raise FileError("too_large", f"file grew past the size limit of {human_bytes(self.limit)} while read "
                                         f"(PAYNORM_FILES_MAX_BYTES)")
        if self.progress is not None:
            self.progress.bytes(self.bytes)


class _Gunzip(io.RawIOBase):
    """The decompressed bytes of a gzip stream (concatenated members included), read as they are
    needed: memory holds one chunk whatever the ratio, and the size limit applies to the
    decompressed bytes too, so a gzip bomb fails with a reason instead of filling memory or disk."""

    def __init__(self, compressed: _Meter, limit: int) -> None:
        self.gz = gzip.GzipFile(fileobj=compressed, mode="rb")  # type: ignore[arg-type]
        self.compressed = compressed
        self.limit = limit
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self.gz.read(len(b))
        except EOFError as e:
            raise FileError("bad_gzip", f"truncated gzip file: {e} (after {self.compressed.bytes:,} compressed "
                                        f"bytes)") from e
        except (gzip.BadGzipFile, zlib.error) as e:
            raise FileError("bad_gzip", f"not a valid gzip file: {e}") from e
        n = len(data)
        self.bytes += n
        if self.bytes > self.limit:
            raise FileError("too_large_decompressed",
                            f"gzip content passed the size limit of {human_bytes(self.limit)} once decompressed "
                            f"(PAYNORM_FILES_MAX_BYTES), after {self.compressed.bytes:,} compressed bytes: not "
                            f"loaded (split the file or raise the limit; a new version of the file is tried again)")
        b[:n] = data
        return n


def _text(raw: io.RawIOBase, newline: str | None = None) -> TextIO:
    buffered = io.BufferedReader(raw, _READ_CHUNK)
    return io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="strict", newline=newline)


_Record = tuple[Any, str | None]  # (the parsed record, or its raw text; the record's own error)


def _too_long(what: str) -> FileError:
    return FileError("record_too_large", f"{what} is longer than {MAX_RECORD_CHARS:,} characters: not loaded "
                                         f"(a single record that large is not a payment record)")


def _lines(text: TextIO, head: str = "") -> Iterator[str]:
    """The lines of ``head`` then ``text``, each at most MAX_RECORD_CHARS long: a longer line fails
    the file instead of growing in memory (a line that never ends, in a gzip bomb)."""
    pending = ""
    lineno = 0
    for src in ((io.StringIO(head, newline=""), text) if head else (text,)):
        while line := src.readline(MAX_RECORD_CHARS + 1 - len(pending)):
            pending = pending + line if pending else line
            if pending[-1] in "\r\n":
                lineno += 1
                yield pending
                pending = ""
            elif len(pending) > MAX_RECORD_CHARS:
                raise _too_long(f"line {lineno + 1}")
    if pending:
        yield pending


def _iter_jsonl(text: TextIO, head: str = "") -> Iterator[_Record]:
    seen = False
    for lineno, line in enumerate(_lines(text, head), 1):
        s = line.strip(" \t\r\n")
        if not s:
            continue
        seen = True
        try:
            yield json.loads(s, parse_float=Decimal), None
        except json.JSONDecodeError as e:
            yield s, f"JSONL line {lineno}: not JSON ({e.msg} at column {e.colno})"
        except (ValueError, RecursionError) as e:
            yield s, f"JSONL line {lineno}: not loadable JSON ({type(e).__name__}: {str(e)[:120]})"
    if not seen:
        raise FileError("empty", "empty file: no JSON Lines record, only blank lines")


class _JsonArray:
    """Streams the elements of a top-level JSON array (a single top-level value is one record).

    ``json.JSONDecoder.raw_decode`` over a sliding buffer: memory holds one chunk plus the element
    being parsed, whatever the size of the file.
    """

    def __init__(self, text: TextIO, as_lines_fallback: bool) -> None:
        self.text = text
        self.buf = ""
        self.pos = 0
        self.base = 0  # characters dropped from the buffer's front
        self.eof = False
        self.dec = json.JSONDecoder(parse_float=Decimal)
        self.as_lines_fallback = as_lines_fallback

    def _fill(self, size: int = _READ_CHUNK) -> bool:
        if self.pos:
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        data = self.text.read(size)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof or not self._fill():
                return ""

    def _where(self) -> str:
        return f"at character {self.base + self.pos:,}"

    def __iter__(self) -> Iterator[_Record]:
        c = self._peek()
        if c == "":
            raise FileError("empty", "empty file: no JSON value")
        if c != "[":
            yield from self._single()
            return
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
            self._end()
            return
        index = 0
        while True:
            yield self._value(index), None
            index += 1
            c = self._peek()
            if c == ",":
                self.pos += 1
                if self._peek() == "":
                    raise FileError("bad_json", f"truncated JSON: the file ends after record {index - 1} "
                                                f"and a ',' ({self._where()})")
                continue
            if c == "]":
                self.pos += 1
                self._end()
                return
            if c == "":
                raise FileError("bad_json", f"truncated JSON: the array ends after record {index - 1} "
                                            f"without its closing ']' ({self._where()})")
            raise FileError("bad_json", f"invalid JSON: expected ',' or ']' after record {index - 1} {self._where()}")

    def _value(self, index: int) -> Any:
        size = _READ_CHUNK
        while True:
            try:
                value, end = self.dec.raw_decode(self.buf, self.pos)
                # A number cut by the buffer's end ("7." of "7.25") parses as a shorter one: read on.
                if self.eof or not (isinstance(value, (int, Decimal)) and not isinstance(value, bool)
                                    and _NUMBER_TAIL.match(self.buf, end).end() == len(self.buf)):
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof:
                    what = "truncated" if e.pos >= len(self.buf.rstrip()) or "Unterminated" in e.msg else "invalid"
                    raise FileError("bad_json", f"{what} JSON in record {index}: {e.msg} "
                                                f"at character {self.base + e.pos:,}") from e
            except RecursionError as e:
                raise FileError("bad_json", f"record {index} is nested too deeply {self._where()}") from e
            except ValueError as e:  # e.g. an integer with more digits than Python converts
                raise FileError("bad_json", f"record {index}: {str(e)[:160]} {self._where()}") from e
            if len(self.buf) - self.pos > MAX_RECORD_CHARS:
                raise _too_long(f"record {index} ({self._where()})")
            self._fill(size)
            size = min(size * 2, 16 << 20)

    def _end(self) -> None:
        if self._peek() != "":
            raise FileError("bad_json", f"invalid JSON: extra data after the top-level array {self._where()}")

    def _single(self) -> Iterator[_Record]:
        parts = [self.buf[self.pos:]]
        size = len(parts[0])
        while size <= MAX_RECORD_CHARS and (part := self.text.read(_READ_CHUNK)):
            parts.append(part)
            size += len(part)
        rest = "".join(parts)
        if size > MAX_RECORD_CHARS:
            if not self.as_lines_fallback:
                raise _too_long("the file's single JSON value")
            log.info("file holds more than one large JSON value: reading it as JSON Lines")
            yield from _iter_jsonl(self.text, head=rest)  # streamed on from where it stopped
            return
        try:
            yield json.loads(rest, parse_float=Decimal), None
            return
        except json.JSONDecodeError as e:
            if self.as_lines_fallback and e.msg == "Extra data":  # a .json file holding JSON Lines
                log.info("file holds several JSON values: reading it as JSON Lines")
                error = e
            else:
                what = "truncated" if e.pos >= len(rest.rstrip()) or "Unterminated" in e.msg else "invalid"
                raise FileError("bad_json", f"{what} JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
        except (ValueError, RecursionError) as e:
            raise FileError("bad_json", f"JSON not loadable: {type(e).__name__}: {str(e)[:160]}") from e
        del error
        yield from _iter_jsonl(io.StringIO(rest))


def _iter_csv(text: TextIO) -> Iterator[_Record]:
    lines = _lines(text)
    first = next(lines, "")
    while first and not first.strip():
        first = next(lines, "")
    if not first:
        raise FileError("empty", "empty CSV file: no header line")
    counts = {d: first.count(d) for d in (",", ";", "\t", "|")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise FileError("bad_csv", f"CSV header: {e}") from e
    names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FileError("bad_csv", f"CSV header repeats column(s) {', '.join(dup)}")
    width = len(names)
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip() and width > 1):
                continue  # blank line
            if len(row) != width:
                raise FileError("ragged_csv", f"ragged CSV: line {reader.line_num} has {len(row)} field(s), "
                                              f"the header has {width}")
            yield dict(zip(names, row)), None
    except csv.Error as e:
        raise FileError("bad_csv", f"CSV line {reader.line_num}: {e}") from e


_NO_PYARROW = "Parquet files need pyarrow: pip install 'paynorm[parquet]'"


def _have_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _iter_parquet(path: str | BinaryIO, batch_rows: int, progress: _Progress | None) -> Iterator[_Record]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise FileError("missing_dependency", _NO_PYARROW) from e
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise FileError("not_parquet", f"not a Parquet file: {e}") from e
    if progress is not None:
        progress.total_rows = pf.metadata.num_rows
    try:
        for batch in pf.iter_batches(batch_size=max(batch_rows, 1)):
            for row in batch.to_pylist():
                yield row, None
    except (pa.ArrowException, OSError) as e:
        raise FileError("bad_parquet", f"unreadable Parquet data: {e}") from e


# -- records to landing rows ------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


def _plain(v: Any, depth: int = 0) -> Any:
    """Python values from a reader as values ``dumps_exact`` writes exactly (no float ever)."""
    t = type(v)
    if v is None or t is str or t is bool or t is int:
        return v
    if t is Decimal:
        if not v.is_finite():
            return None
        if v.adjusted() >= _PG_MAX_WEIGHT_DIGITS or -v.as_tuple().exponent > _PG_MAX_SCALE:  # type: ignore[operator]
            return str(v)  # beyond PostgreSQL numeric: kept, as text
        return v
    if depth > _MAX_NESTING:
        raise _TooDeep
    if t is dict:
        return {(k if type(k) is str else str(k)): _plain(x, depth + 1) for k, x in v.items()}
    if t is list or t is tuple:
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, float):
        return Decimal(repr(v)) if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, timedelta):
        return Decimal(str(v.total_seconds()))
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return base64.b64encode(b).decode("ascii")
    if isinstance(v, dict):
        return _plain(dict(v), depth)
    if isinstance(v, (list, tuple)):
        return _plain(list(v), depth)
    return str(v)


def _jsonb_safe(text: str) -> str:
    """JSON text PostgreSQL jsonb accepts: no \\u0000 escape, no lone surrogate (decode notes both)."""
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1", text)
    if not text.isascii() and _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _maybe_json(value: Any) -> Any:
    """A JSON-holding column exported as text (CSV, Parquet): parsed when it is a JSON object or array."""
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        if s[0] in "{[":
            try:
                return json.loads(s, parse_float=Decimal)
            except (ValueError, RecursionError):
                return value  # kept as text: its decode error shows on the landed row
    return value


def _lake_id(value: Any) -> str | None:
    """The envelope's id as the CDC consumer keys it (``id::text``: UUIDs lowercase, integers plain)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return str(int(value)) if value.is_finite() and value == value.to_integral_value() else None
    if isinstance(value, str):
        s = value.strip()
        if not s or len(s) > 256:  # not an id (and too long for the landing's primary key index)
            return None
        return s.lower() if _UUID_RE.match(s) else s
    return None


class RecordConverter:
    """Turns the records of one file into ``LandingRow``s (op 'F', source 'file:<key>')."""

    def __init__(self, ref: FileRef, payload_column: str = "") -> None:
        self.ref = ref
        self.committed_at = ref.mtime.isoformat()
        self.payload_columns = (payload_column,) if payload_column else PAYLOAD_COLUMN_CANDIDATES
        self.text_columns = ref.fmt in ("csv", "parquet")

    def _envelope_payload_column(self, rec: dict[str, Any]) -> str | None:
        if not rec.keys() <= LAKE_COLUMNS | set(self.payload_columns):
            return None
        pc = next((c for c in self.payload_columns if c in rec), None)
        if pc is None or not rec.keys() - {"id", pc}:
            return None  # {"id": .., "data": ..} alone is too ambiguous: a provider payload may look like it
        return pc

    def convert(self, index: int, rec: Any, error: str | None) -> tuple[LandingRow, str | None]:
        """The landed row for record ``index`` and an error that overrides its decode result, if any."""
        key = f"{self.ref.key}#{index}"
        try:
            if error is None and isinstance(rec, dict) and (pc := self._envelope_payload_column(rec)):
                columns: dict[str, str] = {}
                payload_raw = "null"
                for name, value in rec.items():
                    if self.text_columns:
                        value = _maybe_json(value) if name in _JSON_COLUMNS else (None if value == "" else value)
                    text = dumps_exact(_plain(value))
                    columns[name] = _jsonb_safe(text)
                    if name == pc:
                        payload_raw = text
                lake_id = _lake_id(rec.get("id"))
                return LandingRow(lake_id or key, columns, "F", None, None, self.committed_at,
                                  payload_raw=payload_raw, has_payload=True), None
            text = dumps_exact(_plain(rec))
        except (_TooDeep, RecursionError):
            text, error = "null", f"record {index} is nested deeper than {_MAX_NESTING} levels"
        columns = {"id": "null", "data": _jsonb_safe(text), "merchant": "null", "transactional_id": "null"}
        return LandingRow(key, columns, "F", None, None, self.committed_at, payload_raw=text,
                          has_payload=True), error


# -- bookkeeping ------------------------------------------------------------------------------------


_FILE_STAGE_DDL = """
create temp table if not exists _paynorm_file_stage (
    ord bigint, lake_key text, row_data jsonb, partial boolean, has_payload boolean, payload jsonb,
    payload_format text, decode_error text, shape_key text, op text, deleted boolean,
    lake_lsn text, lake_xid bigint, committed_at text, payload_key text
) on commit delete rows
"""
_STAGE_COLUMNS = STAGED_COLUMNS
_STAGE_COPY = f"copy _paynorm_file_stage (ord, {_STAGE_COLUMNS}) from stdin"
# A key repeated in a file (an envelope id seen twice) keeps its last record, as a re-read would.
_STAGE_TO_LANDING = (f"insert into _paynorm_landing ({_STAGE_COLUMNS}) select distinct on (lake_key) {_STAGE_COLUMNS}"
                     f" from _paynorm_file_stage order by lake_key, ord desc")
@dataclass
class _FileVersion:
    """A file's checkpoint: the version just loaded, marked completed in its landing commit."""

    key: str
    fmt: str | None
    started: datetime
    sha: str | None = None
    records: int = 0
    landed: int = 0
    bad: int = 0
    gone: int = 0
    skipped: bool = False  # another loader committed this very version first

    def save(self, conn: psycopg.Connection, rows: int) -> None:
        if self.skipped:
            return
        finished = _now()
        conn.execute(
            """
            update paynorm.processed_files set status = 'completed', sha256 = %(sha)s, format = %(fmt)s,
                records = %(records)s, rows_landed = %(landed)s, bad_records = %(bad)s, tombstoned = %(gone)s,
                error = null, error_code = null, started_at = %(started)s, finished_at = %(finished)s,
                duration_ms = %(ms)s, updated_at = now()
            where key = %(key)s
            """,
            {"sha": self.sha, "fmt": self.fmt, "records": self.records, "landed": rows, "bad": self.bad,
             "gone": self.gone, "key": self.key, "started": self.started, "finished": finished,
             "ms": int((finished - self.started).total_seconds() * 1000)})
        crashpoint("file_before_commit")


@dataclass
class Known:
    """The tracking row of a file, as stored."""

    status: str
    size: int | None
    etag: str | None
    mtime: datetime | None
    sha256: str | None
    error_code: str | None
    started_at: datetime | None
    error: str | None = None


def _known(conn: psycopg.Connection, keys: list[str]) -> dict[str, Known]:
    rows = conn.execute(
        "select key, status, size, etag, mtime, sha256, error_code, started_at, error from paynorm.processed_files"
        " where key = any(%s)", (keys,)).fetchall()
    return {r[0]: Known(*r[1:]) for r in rows}


def _same_listing(ref: FileRef, k: Known) -> bool:
    if k.size != ref.size:
        return False
    if ref.etag is not None or k.etag is not None:
        return k.etag == ref.etag
    return k.mtime == ref.mtime


def _racy(ref: FileRef, k: Known) -> bool:
    """A local file written within the mtime granularity of our last read may have changed unseen."""
    return ref.etag is None and (k.started_at is None
                                 or (k.started_at - ref.mtime).total_seconds() < _RACY_SECONDS)


def _now() -> datetime:
    """The loader's clock (local mtimes are compared with it, so not the warehouse's)."""
    return datetime.now(timezone.utc)


# -- loading ----------------------------------------------------------------------------------------


@dataclass
class LoadStats:
    files_seen: int = 0
    loaded: int = 0
    skipped: int = 0  # unchanged and loaded
    failed: int = 0  # failed in this pass
    still_failed: int = 0  # failed in an earlier pass and unchanged since: still a failure of this pass
    links_skipped: int = 0  # symbolic links inside the folder, not followed (their targets load on their own)
    records: int = 0
    rows_landed: int = 0
    bad_records: int = 0
    tombstoned: int = 0
    bytes_read: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, error) of every failed file

    def add(self, other: LoadStats) -> None:
        for name in ("files_seen", "loaded", "skipped", "failed", "still_failed", "links_skipped", "records",
                     "rows_landed", "bad_records", "tombstoned", "bytes_read"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures

    @property
    def failing(self) -> int:
        """Files that are failures of this pass: failed now, or failed before and not changed since."""
        return self.failed + self.still_failed

    def summary(self) -> str:
        still = f", {self.still_failed} still failed (unchanged since an earlier pass)" if self.still_failed else ""
        links = f", {self.links_skipped} symbolic link(s) inside the folder not followed" if self.links_skipped else ""
        return (f"{self.files_seen} file(s) seen: {self.loaded} loaded ({self.records:,} records, "
                f"{self.bad_records:,} with decode errors, {self.tombstoned:,} tombstoned), "
                f"{self.skipped} unchanged, {self.failed} failed{still}{links}")


@dataclass
class LoadResult:
    exit_code: int
    message: str = ""
    stats: LoadStats = field(default_factory=LoadStats)


class FileLoader:
    """Loads the files of one store into the warehouse, one transaction per file."""

    def __init__(self, conn: psycopg.Connection, store: _Store, *, max_bytes: int, chunk: int,
                 max_payload_bytes: int, payload_column: str = "", stop: threading.Event | None = None,
                 files_are_lake_export: bool = False) -> None:
        self.conn = conn
        self.store = store
        self.max_bytes = max_bytes
        self.chunk = max(chunk, 1)
        self.max_payload_bytes = max_payload_bytes
        self.payload_column = payload_column
        self.stop = stop or threading.Event()
        # The files are the lake's own export: their records may take over rows other sources landed
        # (the landing's source precedence); otherwise a file never touches a row it does not own.
        self.files_are_lake_export = files_are_lake_export

    # one pass over the store
    def run_pass(self) -> LoadStats:
        stats = LoadStats()
        for page in self.store.pages():
            known = _known(self.conn, [r.key for r in page])
            for ref in page:
                if self.stop.is_set():
                    return stats
                stats.files_seen += 1
                self._one(ref, known.get(ref.key), stats)
        stats.links_skipped = self.store.links_skipped
        return stats

    def _still_failed(self, ref: FileRef, k: Known, stats: LoadStats) -> None:
        """A file that failed before and has not changed: not read again, but a failure of this pass."""
        stats.still_failed += 1
        stats.failures.append((ref.key, f"{k.error or k.error_code} (unchanged since it failed)"))

    def _one(self, ref: FileRef, k: Known | None, stats: LoadStats) -> None:
        if ref.refused is not None:  # a symbolic link out of the folder: never opened, never hashed
            if k is not None and k.status == "failed" and k.error_code == "symlink" and _same_listing(ref, k):
                self._still_failed(ref, k, stats)
            else:
                self._fail(ref, FileError("symlink", ref.refused), None, stats)
            return
        if k is not None and self._unchanged(ref, k, stats):
            if k.status == "failed":
                self._still_failed(ref, k, stats)
            else:
                stats.skipped += 1
            return
        if ref.compression is not None and ref.fmt == "parquet":
            self._fail(ref, FileError("unsupported", f"{ref.compression}-compressed Parquet is not supported "
                                                     f"(Parquet compresses its own pages): store it uncompressed"),
                       None, stats)
            return
        if ref.size > self.max_bytes:
            self._fail(ref, FileError("too_large", f"file is {human_bytes(ref.size)}, larger than the limit of "
                                                   f"{human_bytes(self.max_bytes)} (PAYNORM_FILES_MAX_BYTES): "
                                                   f"not downloaded; split it or raise the limit"), None, stats)
            return
        if ref.size == 0:
            self._fail(ref, FileError("empty", "empty file (0 bytes)"), None, stats)
            return
        if ref.fmt == "parquet" and not _have_pyarrow():  # say so before downloading anything
            self._fail(ref, FileError("missing_dependency", _NO_PYARROW), None, stats)
            return
        started_at = _now()
        self._mark_processing(ref, started_at)
        started = time.monotonic()
        progress = _Progress(ref.key, total_bytes=ref.size, logger=log)
        meters: list[_Meter] = []
        error: FileError | None = None
        outcome = None
        try:
            version = _FileVersion(ref.key, ref.fmt, started_at)
            landing.commit(self.conn, lambda conn: self._load(ref, progress, meters, version,
                                                              had_version=k is not None), version)
            outcome = None if version.skipped else (version.records, version.landed, version.bad, version.gone)
        except _Vanished as e:
            log.info("%s; skipped in this pass", e)
            self._unmark(ref)
            return
        except FileError as e:
            error = e
        except UnicodeDecodeError as e:
            bad = e.object[e.start:e.start + 1].hex() if isinstance(e.object, (bytes, bytearray)) else "?"
            read = meters[0].bytes if meters else 0
            error = FileError("not_utf8", f"not UTF-8: invalid byte 0x{bad} ({e.reason}) within the first "
                                          f"{read:,} bytes")
        except OSError as e:
            error = FileError("io", f"cannot read: {e}")
        except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded,
                psycopg.errors.CardinalityViolation) as e:
            error = FileError("refused", f"the warehouse refused the file's rows: {str(e).strip().splitlines()[0]}")
        finally:
            progress.close()
            stats.bytes_read += meters[0].bytes if meters else 0
        if error is not None:
            whole = bool(meters) and meters[0].bytes == ref.size  # a hash only of content read to its end
            self._fail(ref, error, meters[0].sha.hexdigest() if whole else None, stats, started_at)
            return
        if outcome is None:  # another loader committed this version while we waited for its lock
            stats.skipped += 1
            return
        records, landed, bad_records, gone = outcome
        stats.loaded += 1
        stats.records += records
        stats.rows_landed += landed
        metrics.ROWS_LANDED.labels("F").inc(landed)
        stats.bad_records += bad_records
        stats.tombstoned += gone
        log.info("loaded %s (%s, %s): %s records, %s rows landed%s%s, %.1fs", ref.key, ref.fmt, human_bytes(ref.size),
                 f"{records:,}", f"{landed:,}", f", {bad_records:,} with decode errors" if bad_records else "",
                 f", {gone:,} records of the previous version tombstoned" if gone else "",
                 time.monotonic() - started,
                 extra={"file": ref.key, "format": ref.fmt, "bytes": ref.size, "records": records,
                        "rows_landed": landed, "decode_errors": bad_records, "rows_tombstoned": gone,
                        "seconds": round(time.monotonic() - started, 3)})

    def _unchanged(self, ref: FileRef, k: Known, stats: LoadStats) -> bool:
        if k.status == "processing":
            return False  # an earlier load was interrupted: nothing of it committed, load again
        if not _same_listing(ref, k):
            if ref.etag is None and k.size == ref.size and k.sha256 and k.status == "completed":
                return self._same_hash(ref, k, stats)  # a touched local file: compare contents
            return False
        if k.status == "failed":
            if k.error_code in _RETRYABLE:
                return False
            if k.error_code == "too_large" and ref.size <= self.max_bytes:
                return False  # the limit was raised
            return True
        if ref.etag is None and _racy(ref, k):
            return self._same_hash(ref, k, stats)
        return True

    def _same_hash(self, ref: FileRef, k: Known, stats: LoadStats) -> bool:
        """Local files only: hash the content; same content → just remember the new mtime."""
        sha = hashlib.sha256()
        try:
            with self.store.open(ref) as f:  # never through a symbolic link
                while chunk := f.read(_READ_CHUNK):
                    sha.update(chunk)
                    stats.bytes_read += len(chunk)
        except (OSError, FileError, _Vanished):
            return False
        if sha.hexdigest() != k.sha256:
            return False
        self.conn.execute("update paynorm.processed_files set mtime = %s, started_at = %s, updated_at = now()"
                          " where key = %s", (ref.mtime, _now(), ref.key))
        return True

    def _mark_processing(self, ref: FileRef, started: datetime) -> None:
        """Committed on its own: an interrupted load stays visible as 'processing' (and is loaded again)."""
        self.conn.execute(
            """
            insert into paynorm.processed_files as p (key, store, size, etag, mtime, format, status, attempts,
                started_at, first_seen_at, updated_at)
            values (%(key)s, %(store)s, %(size)s, %(etag)s, %(mtime)s, %(fmt)s, 'processing', 1, %(started)s, now(),
                    now())
            on conflict (key) do update set size = excluded.size, etag = excluded.etag, mtime = excluded.mtime,
                format = excluded.format, status = 'processing', attempts = p.attempts + 1,
                started_at = excluded.started_at, finished_at = null, updated_at = now()
            -- a concurrent loader that just completed this very version keeps its row (we skip it then)
            where not (p.status = 'completed' and p.size = excluded.size and p.etag is not distinct from excluded.etag
                       and p.mtime = excluded.mtime)
            """,
            {"key": ref.key, "store": self.store.kind, "size": ref.size, "etag": ref.etag, "mtime": ref.mtime,
             "fmt": ref.fmt, "started": started})

    def _unmark(self, ref: FileRef) -> None:
        self.conn.execute("update paynorm.processed_files set status = 'failed', error_code = 'io', error = %s,"
                          " finished_at = %s, updated_at = now() where key = %s and status = 'processing'",
                          ("changed or deleted while being listed; retried at the next pass", _now(), ref.key))

    def _fail(self, ref: FileRef, e: FileError, sha: str | None, stats: LoadStats,
              started: datetime | None = None) -> None:
        log.error("file %s failed: %s", ref.key, e.message,
                  extra={"file": ref.key, "format": ref.fmt, "bytes": ref.size, "error_code": e.code, "error": e.message})
        finished = _now()
        stats.failed += 1
        stats.failures.append((ref.key, e.message))
        self.conn.execute(
            """
            insert into paynorm.processed_files as p (key, store, size, etag, mtime, sha256, format, status,
                records, error, error_code, attempts, started_at, finished_at, duration_ms, first_seen_at, updated_at)
            values (%(key)s, %(store)s, %(size)s, %(etag)s, %(mtime)s, %(sha)s, %(fmt)s, 'failed', 0, %(err)s,
                    %(code)s, 1, %(started)s, %(finished)s, %(ms)s, now(), now())
            on conflict (key) do update set size = excluded.size, etag = excluded.etag, mtime = excluded.mtime,
                sha256 = excluded.sha256, format = excluded.format, status = 'failed', records = 0,
                error = excluded.error, error_code = excluded.error_code,
                attempts = case when p.status = 'processing' then p.attempts else p.attempts + 1 end,
                started_at = excluded.started_at, finished_at = excluded.finished_at,
                duration_ms = excluded.duration_ms, updated_at = now()
            """,
            {"key": ref.key, "store": self.store.kind, "size": ref.size, "etag": ref.etag, "mtime": ref.mtime,
             "sha": sha, "fmt": ref.fmt, "err": e.message[:2000], "code": e.code, "started": started or finished,
             "finished": finished, "ms": int((finished - (started or finished)).total_seconds() * 1000)})

    def _records(self, ref: FileRef, progress: _Progress, meter_box: list[_Meter]) -> Iterator[_Record]:
        def meter(raw: Any) -> _Meter:
            m = _Meter(raw, self.max_bytes, progress)
            meter_box.append(m)
            return m

        if ref.fmt == "parquet":
            with self.store.seekable(ref, meter) as source:  # type: ignore[attr-defined]
                yield from _iter_parquet(source, self.chunk, progress)
            return
        with self.store.open(ref) as raw:
            m = meter(raw)
            stream: io.RawIOBase = _Gunzip(m, self.max_bytes) if ref.compression == "gzip" else m
            if ref.fmt == "jsonl":
                yield from _iter_jsonl(_text(stream))
            elif ref.fmt == "csv":
                yield from _iter_csv(_text(stream, newline=""))
            else:
                yield from _JsonArray(_text(stream), as_lines_fallback=self.store.fmt == "auto")
            if m.bytes == 0:
                raise FileError("empty", "empty file (0 bytes)")

    def _load(self, ref: FileRef, progress: _Progress, meter_box: list[_Meter], version: _FileVersion,
              had_version: bool) -> int:
        """Inside the file's landing commit: stage every record, upsert once, tombstone what the new
        version no longer has; rows landed (the counts go into ``version``, the commit's checkpoint)."""
        conn = self.conn
        row = conn.execute("select status, size, etag, mtime, started_at from paynorm.processed_files"
                           " where key = %s for update", (ref.key,)).fetchone()
        if row is not None and row[0] == "completed" and row[1] == ref.size and row[2] == ref.etag \
                and row[3] == ref.mtime:
            version.skipped = True  # a concurrent loader committed this very version while we waited for the lock
            return 0
        source = f"file:{ref.key}"
        converter = RecordConverter(ref, self.payload_column)
        conn.execute(STAGING_DDL)
        conn.execute(_FILE_STAGE_DDL)
        batch = LandingBatch(source, self.max_payload_bytes)
        last_index: dict[str, int] = {}
        overrides: dict[str, str] = {}
        records = bad = 0
        for index, (rec, error) in enumerate(self._records(ref, progress, meter_box)):
            landing_row, override = converter.convert(index, rec, error)
            batch.add(landing_row)
            last_index[landing_row.lake_key] = index
            if override is not None:
                overrides[landing_row.lake_key] = override
            elif landing_row.lake_key in overrides:
                del overrides[landing_row.lake_key]
            records += 1
            if len(batch) >= self.chunk:
                bad += self._stage(batch, last_index, overrides)
                progress.rows(records)
                crashpoint("file_chunk")
        bad += self._stage(batch, last_index, overrides)
        progress.rows(records)
        sha = meter_box[0].sha.hexdigest() if meter_box else None
        with conn.cursor() as cur:
            cur.execute(_STAGE_TO_LANDING)
            cur.execute("analyze _paynorm_landing")  # a temp table has no statistics: plan the upsert on real ones
        if not self.files_are_lake_export:
            kept = landing.staged_owned_elsewhere(conn, source)
            if kept:
                log.warning("file %s: %d record(s) carry the id of a row another source (CDC, poll, another "
                            "file) landed; that row is kept as it is (--files-are-lake-export if these files "
                            "are the lake's own export)", ref.key, kept)
        landed = landing.upsert_staged(conn, source, files_are_lake_export=self.files_are_lake_export)
        # records of the previous version that this one no longer has
        gone = landing.tombstone_unstaged(conn, source) if had_version else 0
        version.sha, version.records, version.landed, version.bad, version.gone = sha, records, landed, bad, gone
        return landed

    def _stage(self, batch: LandingBatch, last_index: dict[str, int], overrides: dict[str, str]) -> int:
        """COPY the buffered rows (decoded by the landing's own encoder) into the file's stage table."""
        if not batch.rows:
            return 0
        bad = 0
        with self.conn.cursor() as cur:
            with cur.copy(_STAGE_COPY) as copy:
                for rec in staged_records(batch):
                    key = rec[0]
                    err = overrides.get(key)
                    if err is not None:  # the record itself is broken: keep its text, say why
                        rec = (key, rec[1], rec[2], rec[3], None, "text", err, None, *rec[8:13], None)
                    if rec[4] is None and rec[6] is not None:
                        bad += 1
                    copy.write_row((last_index[key], *rec))
        batch.clear()
        last_index.clear()
        overrides.clear()
        return bad


# -- the entry point --------------------------------------------------------------------------------


def load(settings: Settings, uri: str | None = None, *, once: bool = True, interval: float | None = None,
         prefix: str | None = None, fmt: str | None = None, pattern: str | None = None,
         endpoint_url: str | None = None, stop: threading.Event | None = None,
         max_passes: int | None = None, files_are_lake_export: bool = False) -> LoadResult:
    """Load the files under ``uri`` (a folder or ``s3://bucket/prefix``) into ``raw.lake_transactions``.

    Arguments left None come from ``settings`` (``files_path``, ``interval``, ``files_prefix``,
    ``files_format``, ``files_glob``, ``s3_endpoint_url``). With ``once`` it makes one pass and
    returns (exit code 1 while any file is failed: failed in this pass, or failed before and not
    changed since); otherwise it passes again every ``interval`` seconds until ``stop`` is set.

    Warehouse and store connection problems go through the one retry policy: a permanent one (bad
    DSN, authentication, privilege, no such bucket) returns exit code 4 at once, a transient one is
    retried with back-off for ``settings.retry_for`` seconds (default: 60 with ``once``, forever
    otherwise), then exit code 1.

    ``files_are_lake_export`` (or ``settings.files_are_lake_export``): the files are the lake's own
    export, so their records may take over rows other sources landed; by default a file never
    rewrites, revives or tombstones a row another source owns.
    """
    stop = stop or threading.Event()
    uri = uri or settings.files_path
    if not uri:
        return LoadResult(EXIT_CONFIG, "give a folder or s3://bucket/prefix to load (or set PAYNORM_FILES_PATH)")
    if not settings.warehouse_dsn:
        return LoadResult(EXIT_CONFIG, "set DATABASE_URL (or run `paynorm dev up` and source .paynorm/env)")
    try:
        require_dsn(settings.warehouse_dsn, "DATABASE_URL")
    except ConfigError as e:
        return LoadResult(e.exit_code, str(e))
    interval = settings.interval if interval is None else interval
    lake_export = files_are_lake_export or settings.files_are_lake_export
    try:
        store = open_store(uri, prefix=settings.files_prefix if prefix is None else prefix,
                           pattern=settings.files_glob if pattern is None else pattern,
                           fmt=settings.files_format if fmt is None else fmt,
                           endpoint_url=(settings.s3_endpoint_url if endpoint_url is None else endpoint_url) or None)
    except (ConfigError, StoreError) as e:
        return LoadResult(EXIT_CONFIG, str(e))
    log.info("loading files from %s into %s (format %s%s)", store.label, redact_dsn(settings.warehouse_dsn),
             store.fmt, ", as the lake's own export" if lake_export else "")
    conn_box: list[psycopg.Connection] = []

    def drop_connection() -> None:
        while conn_box:
            conn_box.pop().close()

    def one_pass() -> LoadStats:
        if not conn_box or conn_box[0].closed:
            drop_connection()
            conn_box.append(_connect(settings.warehouse_dsn))
            init_warehouse(conn_box[0])
        loader = FileLoader(conn_box[0], store, max_bytes=settings.files_max_bytes, chunk=settings.files_chunk,
                            max_payload_bytes=settings.max_payload_bytes, payload_column=settings.payload_column,
                            stop=stop, files_are_lake_export=lake_export)
        try:
            return loader.run_pass()
        except StoreError as e:
            raise e.classified() from e

    total = LoadStats()
    passes = 0
    try:
        for stats in run_source(settings, one_pass, once=once, stop=stop, what=f"load {store.label}",
                                interval=interval, on_retry=drop_connection, secrets=(settings.warehouse_dsn,)):
            passes += 1
            total.add(stats)
            log.log(logging.WARNING if stats.failing else logging.INFO, "pass over %s: %s", store.label,
                    stats.summary())
            if once or (max_passes is not None and passes >= max_passes):
                return _result(stats, total)
        return LoadResult(EXIT_OK, "", total)
    except PaynormError as e:
        if isinstance(e, TransientError) and stop.is_set() and not once:
            return LoadResult(EXIT_OK, "", total)  # asked to stop while the warehouse or the store was down
        return LoadResult(e.exit_code, str(e), total)
    finally:
        drop_connection()
        store.close()


def _connect(dsn: str) -> psycopg.Connection:
    """The loader's warehouse connection; a host that does not answer fails the attempt in 10 s (unless
    the DSN sets its own connect_timeout), so the retry deadline is kept."""
    from psycopg import conninfo

    extra = {} if "connect_timeout" in conninfo.conninfo_to_dict(dsn) else {"connect_timeout": 10}
    return psycopg.connect(dsn, autocommit=True, application_name="paynorm-files", **extra)


def _result(stats: LoadStats, total: LoadStats) -> LoadResult:
    """The result of the last pass: exit 1 while any file is failed, including one still failed from an
    earlier pass (it is not read again until it changes, but the run is not a success while it stays)."""
    if not stats.failing:
        return LoadResult(EXIT_OK, "", total)
    parts = [f"{stats.failed} file(s) failed in this pass"] if stats.failed else []
    if stats.still_failed:
        parts.append(f"{stats.still_failed} file(s) still failed, unchanged since an earlier pass (fix, replace or "
                     f"remove them)")
    return LoadResult(EXIT_FAILED, "; ".join(parts) + ": see paynorm.processed_files", total)
