"""One error hierarchy, each error with the exit code the CLI gives it (mapped in one place,
consumer.cli), and the classification of driver errors into permanent and transient ones.

Exit codes: 0 ok; 1 a transient problem that outlasted the retry deadline, or a stage/file that
failed; 2 the slot was lost (re-snapshot needed); 3 another consumer holds the fence; 4 a
configuration or permission problem (bad or missing DSN, authentication, unknown role or database,
missing privilege or table): fix it, retrying cannot help; 5 `paynorm run`'s CDC consumer kept
stopping and was restarted too many times in a row.
"""

from __future__ import annotations

import psycopg

from .secrets import redact_error, url_userinfo_is_ambiguous

__all__ = ["PaynormError", "ConfigError", "TransientError", "SlotLostError", "FencedError", "classify",
           "require_dsn", "EXIT_OK", "EXIT_FAILED", "EXIT_SLOT_LOST", "EXIT_FENCED", "EXIT_CONFIG", "EXIT_CONSUMER_DOWN"]

EXIT_OK, EXIT_FAILED, EXIT_SLOT_LOST, EXIT_FENCED, EXIT_CONFIG, EXIT_CONSUMER_DOWN = 0, 1, 2, 3, 4, 5


class PaynormError(RuntimeError):
    """A problem paynorm explains in one line (no traceback): ``str(e)`` is that line."""

    exit_code = EXIT_FAILED


class ConfigError(PaynormError):
    """Permanent: the configuration, a credential or a privilege is wrong; retrying cannot help."""

    exit_code = EXIT_CONFIG


class TransientError(PaynormError):
    """A connection problem that did not go away within the retry deadline."""

    exit_code = EXIT_FAILED


class SlotLostError(PaynormError):
    exit_code = EXIT_SLOT_LOST


class FencedError(PaynormError):
    exit_code = EXIT_FENCED


# SQLSTATE classes / codes that retrying cannot fix.
_PERMANENT_SQLSTATES = {
    "28000",  # invalid_authorization_specification (no pg_hba entry, role cannot log in)
    "28P01",  # invalid_password
    "3D000",  # invalid_catalog_name (database does not exist)
    "42501",  # insufficient_privilege
    "42P01",  # undefined_table
    "42703",  # undefined_column
    "42704",  # undefined_object (role does not exist in some contexts)
    "3F000",  # invalid_schema_name
}
# libpq reports connection-time refusals as text without a SQLSTATE.
_PERMANENT_MESSAGES = (
    "password authentication failed", "no password supplied", "role \"", "does not exist",
    "no pg_hba.conf entry", "invalid connection option", "missing \"=\" after", "invalid integer value",
    "invalid sslmode value", "unterminated quoted string", "invalid URI", "invalid percent-encoded token",
    "permission denied", "must be superuser or replication role", "must have REPLICATION",
    "is not permitted to log in", "server does not support SSL", "certificate",
)


def require_dsn(dsn: str, variable: str) -> None:
    """ConfigError (one line, no secret in it) unless ``dsn`` is a DSN libpq can read."""
    from psycopg import conninfo

    if not dsn:
        raise ConfigError(f"{variable} is not set")
    if url_userinfo_is_ambiguous(dsn):
        raise ConfigError(f"{variable} is not a valid PostgreSQL URL: its user or password holds an unencoded '@' "
                          f"(percent-encode it: @ is %40, : is %3A, % is %25)")
    try:
        conninfo.conninfo_to_dict(dsn)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's DSN
        raise ConfigError(f"{variable} is not a valid PostgreSQL DSN: "
                          f"{redact_error(str(e), (dsn,)).strip().splitlines()[0]}") from None


def classify(exc: BaseException, *, secrets: tuple[str, ...] = ()) -> PaynormError:
    """The paynorm error a driver error means, with its message on one line and redacted."""
    if isinstance(exc, PaynormError):
        return exc
    text = redact_error(str(exc), secrets).strip().splitlines()
    line = (text[0] if text else type(exc).__name__).strip()
    state = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.ProgrammingError) and not isinstance(exc, psycopg.errors.InsufficientPrivilege) \
            and state is None:
        return ConfigError(line)  # a DSN psycopg cannot parse
    if state in _PERMANENT_SQLSTATES or any(m in line for m in _PERMANENT_MESSAGES):
        return ConfigError(line)
    return TransientError(line)
