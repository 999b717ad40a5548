"""Secrets never reach logs, errors or tables: DSNs are redacted by parsing them (libpq conninfo,
URL or key=value), never by pattern; driver error texts are scrubbed of every form in which a
password can appear (as given, URL-decoded, URL-encoded, quoted)."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

from psycopg import conninfo as _conninfo

__all__ = ["redact_dsn", "dsn_password", "redact_error", "url_userinfo_is_ambiguous"]

_MASK = "***"
_AUTHORITY = re.compile(r"[^/?]*")  # a URL's authority: its rest after "://" up to the path or query


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, parsed the way libpq parses it (None when there is none or the
    DSN cannot be parsed)."""
    if url_userinfo_is_ambiguous(dsn):
        return _url_password(dsn)
    try:
        return _conninfo.conninfo_to_dict(dsn).get("password") or None
    except Exception:  # noqa: BLE001 - a DSN libpq cannot read has no password we could name
        return _url_password(dsn)


def _url_password(dsn: str) -> str | None:
    """The password of a URL as the user meant it: urlsplit ends the userinfo at the LAST @ of the
    authority (libpq, at the first)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return None
    return unquote(parts.password) if parts.password else None


def url_userinfo_is_ambiguous(dsn: str) -> bool:
    """True for a URL DSN whose user or password holds an unencoded ``@``: libpq would split it at
    the first one and read the rest of the password as a host name (and put it in its errors)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or not scheme.startswith("postgres"):
        return False
    return _AUTHORITY.match(rest).group(0).count("@") > 1  # type: ignore[union-attr]


def redact_dsn(dsn: str) -> str:
    """A DSN fit for logs: parsed, the password replaced by ***, rebuilt (host, port, user, dbname
    and options kept). A DSN that cannot be parsed is reduced to what cannot hold a secret."""
    if not dsn:
        return dsn
    if url_userinfo_is_ambiguous(dsn):  # everything up to the last @ may be the password: libpq would misread it
        return _redact_url(dsn)
    try:
        params = _conninfo.conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - libpq cannot read it: a URL still parses as a URL
        return _redact_url(dsn) if "://" in dsn else "<unparseable DSN>"
    if params.get("password"):
        params["password"] = _MASK
    if "://" in dsn.split("?", 1)[0]:  # keep the URL form the user wrote, without any password
        user = params.get("user")
        host = params.get("host") or ""
        port = f":{params['port']}" if params.get("port") else ""
        auth = f"{quote(user, safe='')}{':' + _MASK if params.get('password') else ''}@" if user else ""
        rest = {k: v for k, v in params.items() if k not in ("user", "password", "host", "port", "dbname")}
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in rest.items())
        return f"postgresql://{auth}{host}{port}/{params.get('dbname') or ''}" + (f"?{query}" if query else "")
    return _conninfo.make_conninfo("", **params)


def _redact_url(dsn: str) -> str:
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable DSN>"
    user = f"{parts.username}{':' + _MASK if parts.password is not None else ''}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def redact_error(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` (a driver error, a traceback line) without any of ``secrets`` (passwords, DSNs) in
    any of the forms they can take in an error message."""
    out = text
    forms: set[str] = set()
    for s in secrets:
        if not s:
            continue
        pw = dsn_password(s) if ("=" in s or "://" in s) else s
        for value in filter(None, (s if pw and pw != s else None, pw)):
            forms.update({value, quote(value, safe=""), quote(value, safe="@:/"), unquote(value),
                          value.replace("'", "\\'"), value.replace("\\", "\\\\")})
    for form in sorted((f for f in forms if len(f) >= 3), key=len, reverse=True):
        out = out.replace(form, _MASK)
    # a URL DSN that slipped into the text: its userinfo goes too
    return re.sub(r"(postgres(?:ql)?://[^:@/\s]*):[^@\s]*@", r"\1:" + _MASK + "@", out)
