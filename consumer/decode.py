"""Decode one lake payload into the JSON object stored in ``raw.lake_transactions.payload``.

The lake's payload column holds anything: JSON objects, JSON text inside a JSON string, XML blobs
(bare, or wrapped as ``{"type": "XML_BLOB", "content": "<...>"}``), CSV, name=value pairs or free
text. :func:`decode_payload` turns it into one JSON object, says which format it was, and computes
its :func:`shape_key` — the unit the mapping rules and the LLM step work on.

Guarantees (the consumer relies on them, it never checks again):

* never raises on a payload: every failure becomes ``decode_error`` and the row stays visible;
* never expands XML entities, never reads files or the network: an internal DTD subset, entity
  declarations and entity references are refused; a bare DOCTYPE naming an external DTD
  (Worldpay's ``<!DOCTYPE paymentService PUBLIC ... "http://dtd.worldpay.com/...">``) is accepted
  and never loaded;
* never turns a number into a float: a JSON object's text is passed through untouched;
* the payload text is always accepted by PostgreSQL ``jsonb``: no ``\\u0000``, no lone UTF-16
  surrogates, no NaN/Infinity, numbers within the range of ``numeric``;
* bounded work: size, nesting-depth and element-count limits; Python recursion on payload data
  only in the shape walk, which stops at MAX_DEPTH (the C JSON parser's own recursion guard is
  caught and reported as too deep).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import cast
from urllib.parse import unquote_plus

import orjson
from lxml import etree

__all__ = [
    "FORMATS",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_TEXT_CHARS",
    "MAX_XML_ELEMENTS",
    "Decoded",
    "decode_payload",
    "shape_key",
    "shape_paths",
]

FORMATS = ("json", "xml", "csv", "nvp", "text", "empty")
MAX_BYTES = 1_048_576  # default size limit, in UTF-8 bytes
MAX_DEPTH = 64  # containers (JSON) or elements (XML) nested deeper than this are refused
MAX_XML_ELEMENTS = 100_000
MAX_TEXT_CHARS = 4096  # free text is kept up to this many characters
MAX_WRAPPER_NESTING = 4  # wrapper / JSON-in-string layers unwrapped before giving up
MAX_ERROR_CHARS = 300

NUL_NOTE = "NUL bytes removed"
SURROGATE_NOTE = "invalid Unicode surrogates replaced"

# PostgreSQL numeric limits (jsonb stores numbers as numeric): 131072 digits before the point,
# 16383 after it. A JSON number outside them would make the landing COPY fail.
_PG_MAX_WEIGHT_DIGITS = 131_072
_PG_MAX_SCALE = 16_383

_WS = " \t\r\n\f\v\ufeff"  # what we strip around text (not str.strip(): it eats FS/GS/RS/US too)
_WS_TRAILING = " \r\n\f\v"  # a trailing tab can be an empty last field of a tab-separated row
_WRAPPER_KEYS = frozenset(
    {"type", "format", "content_type", "encoding", "content", "payload", "raw", "body", "data"}
)
_WRAPPER_CONTENT_KEYS = ("content", "payload", "raw", "body", "data")
_CSV_DELIMITERS = (",", ";", "|", "\t")

_SURROGATE_CHARS = re.compile(f"[{chr(0xD800)}-{chr(0xDFFF)}]")  # chr(): no lone surrogates in the source
# A JSON escape that jsonb rejects: \u0000, or a UTF-16 surrogate that is not part of a pair.
# The leading even run of backslashes makes sure the "\u" really starts an escape ("\\u0000" is an
# escaped backslash followed by the letters u0000, which is fine).
_BAD_ESCAPE = re.compile(
    r"(?<!\\)((?:\\\\)*)"
    r"(\\u0000"
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    r"|\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_XML_DECLARATION = re.compile(r"\A<\?xml\b[^>]*\?>")
_DTD_DECLARATION = re.compile(r"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)\b", re.IGNORECASE)
# A DOCTYPE that only names an external DTD (never loaded: load_dtd=False, no_network=True).
_EXTERNAL_DOCTYPE = re.compile(
    r"<!DOCTYPE\s+[\w.:-]+(?:\s+(?:PUBLIC\s+(?:\"[^\"<>\[\]]*\"|'[^'<>\[\]]*')\s+|SYSTEM\s+)"
    r"(?:\"[^\"<>\[\]]*\"|'[^'<>\[\]]*'))?\s*>"
)
# After the root element: whitespace, or a few stray characters that are not markup (a trailing
# quote left by a copy), which say nothing about the document.
_XML_TRAILER = re.compile(r"[^<>&]{0,8}\Z")
# A name=value key: word characters (and . - [ ]) with at least one letter; it may start with a
# digit (Sage Pay `3DSecureStatus`, MIGS `3DSstatus`), never be all digits.
_NVP_KEY = re.compile(r"(?=[\w.\-\[\]]*[^\W\d])\w[\w.\-\[\]]*\Z")
_CSV_HEADER_FIELD = re.compile(r"\w[\w .\-/#()%]*\Z")
_PLAIN_KEY = re.compile(r"[^.\[\]:\"\\\s]+\Z")

_Result = tuple[str, dict[str, object] | None, str | None]  # (format, object, JSON text)
_EMPTY: _Result = ("empty", None, None)


@dataclass(frozen=True, slots=True)
class Decoded:
    """The decoded payload of one lake row, as landed in ``raw.lake_transactions``."""

    payload: str | None  # JSON text of the decoded payload (always an object), None on error/empty
    payload_format: str  # one of FORMATS
    decode_error: str | None  # short human-readable reason, or None
    shape_key: str | None  # see shape_key(); None when payload is None


class _Fail(Exception):
    """Decoding stopped: the row lands with this format, no payload and this message."""

    def __init__(self, fmt: str, message: str) -> None:
        super().__init__(message)
        self.fmt = fmt
        self.message = message


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def decode_payload(raw: object, *, is_json: bool, max_bytes: int = MAX_BYTES) -> Decoded:
    """Decode the text of the lake's payload column (a str, or None); never raises, not even on
    another type (``object``, not ``str | None``: the compiled decoder checks declared types).

    ``is_json`` says the column is ``json``/``jsonb`` (``raw`` is JSON text: an object, a string, a
    number, null…); otherwise ``raw`` is plain text.
    """
    notes: list[str] = []
    try:
        fmt, obj, text = _decode(raw, is_json, max_bytes, notes)
        if obj is None:
            return Decoded(None, fmt, _message(None, notes), None)
        key = _hash(fmt, _collect_paths(obj, fmt))
        return Decoded(text, fmt, _message(None, notes), key)
    except _Fail as failure:
        return Decoded(None, failure.fmt, _message(failure.message, notes), None)
    except Exception as exc:  # a payload must never crash the consumer
        reason = f"decode failed: {type(exc).__name__}: {exc}"
        return Decoded(None, _sniff(raw, is_json), _message(reason, notes), None)


def shape_paths(obj: object) -> set[str]:
    """Every key path of ``obj`` with its JSON type, array indexes collapsed.

    ``{"a": {"v": 1}, "items": [{"sku": "x"}]}`` gives ``a:object``, ``a.v:number``,
    ``items:array``, ``items[]:object`` and ``items[].sku:string``. Keys containing ``. [ ] : "``,
    a backslash or whitespace are written as JSON strings (``"a.b".c:string``) so paths stay
    unambiguous. The root itself has no entry. Iterative: any depth is fine.
    """
    return _collect_paths_iterative(obj)


def shape_key(fmt: str, obj: object) -> str:
    """Stable hash of the format and the structure of ``obj`` (not its values, key order or
    array lengths): the first 16 hex digits of sha256("fmt|" + sorted shape paths, one a line)."""
    return _hash(fmt, shape_paths(obj))


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def _decode(raw: object, is_json: bool, max_bytes: int, notes: list[str]) -> _Result:
    if raw is None:
        return _EMPTY
    if not isinstance(raw, str):
        raise TypeError(f"payload must be str, got {type(raw).__name__}")
    size = _oversize(raw, max_bytes)
    if size is not None:
        raise _Fail(_sniff(raw, is_json), f"payload too large: {size} bytes > {max_bytes}")
    raw = _clean_chars(raw, notes)
    if _is_blank(raw):
        return _EMPTY
    if is_json:
        return _decode_json_column(raw, notes)
    return _decode_text(raw, notes, nesting=0)


def _decode_json_column(raw: str, notes: list[str]) -> _Result:
    """``raw`` is the text of a json/jsonb value."""
    try:
        value, text = _load_json(raw, notes)
    except ValueError as exc:
        raise _Fail("json", f"JSON: {exc}") from None
    if isinstance(value, dict):
        return _from_object(value, text, notes, nesting=0)
    if isinstance(value, str):
        return _decode_text(value, notes, nesting=0)
    if isinstance(value, list):
        return _items(value, text)
    if value is None:
        return _EMPTY
    # a bare number or boolean: keep its exact text
    return _built("text", {"text": text.strip(_WS)[:MAX_TEXT_CHARS]}, notes)


def _decode_text(s: str, notes: list[str], nesting: int) -> _Result:
    """Decode a string: JSON text, XML, name=value pairs, CSV, else free text."""
    text = s.lstrip(_WS).rstrip(_WS_TRAILING)
    if not text:
        return _EMPTY
    head = text[0]
    if head in "{[":
        local: list[str] = []
        try:
            value, text_json = _load_json(text, local)
        except ValueError as exc:
            if head == "{":  # clearly meant as JSON: say why it is broken
                raise _Fail("json", f"JSON: {exc}") from None
        else:  # "[" that does not parse ("[INFO] ...") falls through to the other readers
            notes.extend(local)
            if isinstance(value, dict):
                return _from_object(value, text_json, notes, nesting)
            return _items(cast(list[object], value), text_json)  # text starting with "[": an array
    elif head == "<":
        return _built("xml", _parse_xml(text), notes)
    elif head == '"' and nesting < MAX_WRAPPER_NESTING:  # JSON-encoded twice
        local = []
        try:
            value, _ = _load_json(text, local)
        except ValueError:
            pass
        else:
            if isinstance(value, str):
                notes.extend(local)
                return _decode_text(value, notes, nesting + 1)
    if text.startswith("--"):
        form = _parse_multipart(text)
        if form is not None:
            return _built("nvp", form, notes)
    pairs = _parse_nvp(text)
    if pairs is not None:
        return _built("nvp", pairs, notes)
    table = _parse_csv(text)
    if table is not None:
        return _built("csv", table, notes)
    records = _parse_delimited(text)
    if records is not None:
        return _built("csv", records, notes)
    return _built("text", {"text": text[:MAX_TEXT_CHARS]}, notes)


def _from_object(obj: dict[str, object], text: str, notes: list[str], nesting: int) -> _Result:
    """A JSON object: unwrap {"type": "XML_BLOB", "content": "<...>"}-like wrappers, else keep."""
    inner = _wrapped_string(obj) if nesting < MAX_WRAPPER_NESTING else None
    if inner is not None:
        local: list[str] = []
        result = _decode_text(inner, local, nesting + 1)
        if result[0] not in ("text", "empty"):
            notes.extend(local)
            return result
    return "json", obj, text


def _wrapped_string(obj: dict[str, object]) -> str | None:
    """The inner string when ``obj`` is only a wrapper around one content string, else None."""
    if not obj or not obj.keys() <= _WRAPPER_KEYS:
        return None
    contents = [obj[k] for k in _WRAPPER_CONTENT_KEYS if obj.get(k) is not None]
    if len(contents) == 1 and isinstance(contents[0], str):
        return contents[0]
    return None


def _items(value: list[object], text: str) -> _Result:
    """A top-level array becomes {"items": [...]}, spliced as text so numbers stay exact."""
    return "json", {"items": value}, '{"items":' + text + "}"


def _built(fmt: str, obj: dict[str, object], notes: list[str]) -> _Result:
    """Serialize an object we built ourselves (strings and nulls only: no numbers to protect)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in text:  # e.g. "%00" in a form value: jsonb refuses \u0000
        text = _fix_escapes(text, notes)
        obj = json.loads(text)
    return fmt, obj, text


# --------------------------------------------------------------------------------------------
# Text hygiene and limits
# --------------------------------------------------------------------------------------------


def _oversize(raw: str, max_bytes: int) -> int | None:
    """UTF-8 size of ``raw`` when it exceeds ``max_bytes``, else None; encodes only if needed."""
    chars = len(raw)
    if raw.isascii():
        return chars if chars > max_bytes else None
    if chars * 4 <= max_bytes:  # at most 4 bytes a character: cannot be too large
        return None
    size = len(raw.encode("utf-8", "surrogatepass"))
    return size if size > max_bytes else None


def _clean_chars(raw: str, notes: list[str]) -> str:
    """Remove NUL characters and replace lone surrogates (neither can be stored by PostgreSQL)."""
    if "\x00" in raw:
        raw = raw.replace("\x00", "")
        notes.append(NUL_NOTE)
    if not raw.isascii() and _SURROGATE_CHARS.search(raw):
        raw = _SURROGATE_CHARS.sub("\ufffd", raw)
        notes.append(SURROGATE_NOTE)
    return raw


def _is_blank(s: str) -> bool:
    return not s or (s[0] in _WS and s[-1] in _WS and not s.strip(_WS))


def _sniff(raw: object, is_json: bool) -> str:
    """A cheap guess of the format from the first characters (for rows we do not decode)."""
    if not isinstance(raw, str):
        return "text"
    head = raw[:64].lstrip(_WS)
    if is_json and head.startswith('"'):
        head = head[1:].lstrip(_WS)
    if head[:1] in ("{", "["):
        return "json"
    if head[:1] == "<":
        return "xml"
    return "text"


def _message(error: str | None, notes: list[str]) -> str | None:
    parts = ([error] if error else []) + list(dict.fromkeys(notes))
    if not parts:
        return None
    message = "; ".join(parts).replace("\x00", "")
    message = _SURROGATE_CHARS.sub("\ufffd", message)
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def _parse_number(literal: str) -> Decimal:
    """Fractional or exponent JSON numbers: exact Decimal, refused if numeric cannot hold them."""
    number = Decimal(literal)
    if len(literal) > 32 or "e" in literal or "E" in literal:
        exponent = number.as_tuple().exponent
        if number.adjusted() >= _PG_MAX_WEIGHT_DIGITS or (
            isinstance(exponent, int) and exponent < -_PG_MAX_SCALE
        ):
            raise ValueError(f"number out of PostgreSQL numeric range: {literal[:40]}")
    return number


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON (jsonb refuses it)")


_JSON = json.JSONDecoder(parse_float=_parse_number, parse_constant=_reject_constant)

# orjson parses a payload ~1.5x faster, but into floats: fine for what decode needs from the parsed
# value (its structure and types; the text itself is what lands), not for deciding whether jsonb
# will accept the numbers. It refuses overflow (1e400) and NaN itself; underflow (1e-20000 becomes
# 0.0) needs a negative exponent and a fraction past numeric's 16383 digits needs a long text, so
# texts with "e-"/"E-" or longer than this go to the exact parser, which checks numeric's range.
_FAST_JSON_MAX_CHARS = 16_000


def _load_json(text: str, notes: list[str]) -> tuple[object, str]:
    """Parse JSON text after fixing the escapes jsonb refuses (numbers as Decimal/int, or float
    when orjson can be trusted with the text: see _FAST_JSON_MAX_CHARS).

    Returns the value and the (possibly fixed) text. Raises ValueError on invalid JSON and
    _Fail when nesting is too deep for the parser.
    """
    if "\\u" in text:
        text = _fix_escapes(text, notes)
    if len(text) <= _FAST_JSON_MAX_CHARS and "e-" not in text and "E-" not in text:
        try:
            return orjson.loads(text), text
        except orjson.JSONDecodeError:
            pass  # let the exact parser say what is wrong
    try:
        return _JSON.decode(text), text
    except RecursionError:
        raise _Fail("json", _too_deep("JSON")) from None


def _fix_escapes(text: str, notes: list[str]) -> str:
    """Drop ``\\u0000`` escapes and turn unpaired surrogate escapes into ``\\ufffd``."""
    found: list[str] = []

    def fix(match: re.Match[str]) -> str:
        escape = match.group(2)
        if escape == "\\u0000":
            found.append(NUL_NOTE)
            return match.group(1)
        if len(escape) == 12:  # a valid surrogate pair
            return match.group(0)
        found.append(SURROGATE_NOTE)
        return match.group(1) + "\\ufffd"

    fixed = _BAD_ESCAPE.sub(fix, text)
    notes.extend(dict.fromkeys(found))
    return fixed


def _too_deep(label: str) -> str:
    return f"{label}: nesting deeper than {MAX_DEPTH} levels"


# --------------------------------------------------------------------------------------------
# XML
# --------------------------------------------------------------------------------------------

_PARSERS = threading.local()  # lxml parsers must not be shared between threads


def _xml_parser() -> etree.XMLParser:
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
        _PARSERS.parser = parser
    return parser


def _parse_xml(text: str) -> dict[str, object]:
    """Parse XML with every DTD feature refused, and convert it to a JSON-ready object."""
    body = _XML_DECLARATION.sub("", text, count=1)  # lxml refuses str input with an encoding
    if "<!" in body:
        body = _EXTERNAL_DOCTYPE.sub("", body, count=1)
        if _DTD_DECLARATION.search(body):
            raise _Fail("xml", "XML: DOCTYPE/entity declarations refused")
    try:
        root = _parse_root(body)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise _Fail("xml", f"XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:  # belt and braces
        raise _Fail("xml", "XML: DOCTYPE/entity declarations refused")
    return _xml_to_object(root)


def _parse_root(body: str) -> etree._Element:
    """The root element; a document followed by a few stray non-markup characters (Realex test
    replies end with a lone ``"``) is read without them, anything else after the root is an error."""
    try:
        return etree.fromstring(body, _xml_parser())
    except etree.XMLSyntaxError as exc:
        end = body.rfind(">") + 1
        if "Extra content at the end" not in str(exc) or not end or not _XML_TRAILER.match(body, end):
            raise
        return etree.fromstring(body[:end], _xml_parser())


def _xml_to_object(root: etree._Element) -> dict[str, object]:
    """Root local name as the top key, ``@attr``, children as keys, repeats as arrays, leaf text
    as strings (``#text`` next to attributes or in mixed content), empty elements as null.
    Iterative, with depth and element-count limits."""
    result: dict[str, object] = {}
    stack: list[tuple[etree._Element, dict[str, object], int]] = [(root, result, 1)]
    count = 0
    while stack:
        element, parent, depth = stack.pop()
        count += 1
        if count > MAX_XML_ELEMENTS:
            raise _Fail("xml", f"XML: more than {MAX_XML_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise _Fail("xml", _too_deep("XML"))
        children = [child for child in element if isinstance(child.tag, str)]
        if len(children) != len(element) and any(child.tag is etree.Entity for child in element):
            raise _Fail("xml", "XML: entity references refused")
        attributes: dict[str, object] = {
            "@" + _local_name(name): value for name, value in element.attrib.items()
        }
        node: object
        if children:
            node = attributes
            mixed = _mixed_text(element, children)
            if mixed:
                attributes["#text"] = mixed
            stack.extend((child, attributes, depth + 1) for child in children[::-1])
        elif attributes:
            node = attributes
            if element.text:
                attributes["#text"] = element.text
        else:
            node = element.text or None
        _add(parent, _local_name(element.tag), node)
    return result


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _mixed_text(element: etree._Element, children: list[etree._Element]) -> str:
    """Text around child elements (mixed content), whitespace-only parts ignored."""
    parts = [element.text] + [child.tail for child in children]
    return " ".join(part.strip() for part in parts if part and part.strip())


def _add(parent: dict[str, object], key: str, value: object) -> None:
    """Set ``parent[key]``; a repeated key becomes an array of its values, in order."""
    if key not in parent:
        parent[key] = value
        return
    existing = parent[key]
    if isinstance(existing, list):
        existing.append(value)
    else:
        parent[key] = [existing, value]


# --------------------------------------------------------------------------------------------
# Name=value pairs and CSV
# --------------------------------------------------------------------------------------------


def _parse_nvp(text: str) -> dict[str, object] | None:
    """``a=1&b=2`` (URL-decoded), ``a=1;b=2`` or one pair a line; None if it is not that."""
    if "=" not in text:
        return None
    for separator in _nvp_separators(text):
        pairs = _split_pairs(text, separator)
        if pairs is not None:
            return pairs
    return None


def _nvp_separators(text: str) -> Iterator[str | re.Pattern[str] | None]:
    present = [sep for sep in ("&", "\n", ";") if sep in text]
    yield from present
    if "\n" in present and ";" in present:
        yield re.compile(r"[;\n]")
    if not present:
        yield None  # a single pair


def _split_pairs(text: str, separator: str | re.Pattern[str] | None) -> dict[str, object] | None:
    form = separator == "&"
    if separator is None:
        parts = [text]
    elif isinstance(separator, str):
        parts = text.split(separator)
    else:
        parts = separator.split(text)
    pairs: dict[str, object] = {}
    for part in parts:
        part = part.strip(_WS)
        if not part:
            continue
        name, equals, value = part.partition("=")
        if form:
            name, value = unquote_plus(name), unquote_plus(value)
        else:
            name, value = name.strip(_WS), value.strip(_WS)
        if not equals or not _NVP_KEY.match(name):
            return None
        if separator is None and (not value or value.startswith("=")):
            return None  # "YWJj==" is base64, not a pair
        _add(pairs, name, value)
    return pairs or None


def _parse_csv(text: str) -> dict[str, object] | None:
    """A header line and at least one row that agrees with it; None if it is not CSV.

    One row gives {header: value}, several give {"rows": [...]}. Once the header and the first
    row agree, any later row with another field count is an error (rows are numbered from the
    header, which is row 1).
    """
    if "\n" not in text:
        return None
    chosen = _csv_dialect(text)
    if chosen is None:
        return None
    delimiter, header, trailing = chosen
    rows: list[dict[str, object]] = []
    try:
        for number, record in enumerate(_csv_records(text, delimiter), start=1):
            if number == 1:
                continue
            if trailing and len(record) == len(header) + 1 and record[-1] == "":
                record = record[:-1]
            if len(record) != len(header):
                raise _Fail(
                    "csv", f"CSV: row {number} has {len(record)} fields, header has {len(header)}"
                )
            rows.append(dict(zip(header, record)))
    except csv.Error as exc:
        raise _Fail("csv", f"CSV: {exc}") from None
    return rows[0] if len(rows) == 1 else {"rows": rows}


def _csv_dialect(text: str) -> tuple[str, list[str], bool] | None:
    """The delimiter whose header (name-like, unique fields) matches the first row; widest wins.
    The third item says every line ends with the delimiter (SkipJack): that empty last field is
    not a column."""
    first_line = text.partition("\n")[0]
    best: tuple[str, list[str], bool] | None = None
    for delimiter in _CSV_DELIMITERS:
        if delimiter not in first_line:
            continue
        records = _csv_records(text, delimiter)
        try:
            header = [field.strip() for field in next(records, [])]
            first = next(records, None)
        except csv.Error:
            continue
        trailing = len(header) > 2 and header[-1] == "" and first is not None and first[-1:] == [""]
        if trailing:
            header, first = header[:-1], first[:-1]  # type: ignore[index]
        if first is None or len(header) < 2 or len(first) != len(header):
            continue
        if len(set(header)) != len(header) or not all(_is_header_field(f) for f in header):
            continue
        if best is None or len(header) > len(best[1]):
            best = (delimiter, header, trailing)
    return best


_ENCAPSULATORS = ("$", '"', "|")
_MIN_DELIMITED_FIELDS = 3
_MAX_DELIMITED_LINES = 1000


def _delimited_line(enc: str, delimiter: str) -> re.Pattern[str]:
    e, d = re.escape(enc), re.escape(delimiter)
    inner = '(?:[^"]|"")*' if enc == '"' else f"[^{e}]*"
    field = f"{e}{inner}{e}"
    return re.compile(rf"[ \t]*{field}(?:[ \t]*{d}[ \t]*{field})*[ \t]*{d}?[ \t\r]*\Z")


_DELIMITED_LINES = {(e, d): _delimited_line(e, d) for e in _ENCAPSULATORS for d in _CSV_DELIMITERS if e != d}


def _parse_delimited(text: str) -> dict[str, object] | None:
    """A delimited reply without a header line, every field encapsulated by one character
    (Authorize.Net AIM ``$1$,$1$,$1$,$This transaction has been approved.$,...``, SkipJack's
    change-status reply): ``{"records": [[field, ...], ...]}``, one array per line, fields as
    strings in their order (providers document these replies by field position). None otherwise."""
    lines = [line for line in text.split("\n") if line.strip(_WS)]
    if not lines or len(lines) > _MAX_DELIMITED_LINES or lines[0].lstrip(" \t")[:1] not in _ENCAPSULATORS:
        return None
    for (enc, delimiter), pattern in _DELIMITED_LINES.items():
        if not all(pattern.match(line) for line in lines):
            continue
        records: list[list[str]] = []
        for line in lines:
            line = line.strip(_WS)
            fields = next(csv.reader([line], delimiter=delimiter, quotechar=enc, skipinitialspace=True))
            if line.endswith(delimiter) and fields and fields[-1] == "":
                fields = fields[:-1]
            records.append(fields)
        if len(records[0]) >= _MIN_DELIMITED_FIELDS:
            return {"records": records}
    return None


_MULTIPART_PART = re.compile(
    r'\A\r?\nContent-Disposition:[ \t]*form-data;[ \t]*name="([^"\r\n]{1,128})"[^\r\n]*\r?\n'
    r"(?:[\w-]{1,64}:[^\r\n]*\r?\n)*\r?\n(.*?)\r?\n\Z",
    re.DOTALL | re.IGNORECASE,
)


def _parse_multipart(text: str) -> dict[str, object] | None:
    """A multipart/form-data body (``--boundary`` lines, one ``form-data; name="..."`` part
    each; QuickPay callbacks): the parts as name -> value. None if it is not one."""
    boundary, newline, _ = text.partition("\n")
    boundary = boundary.rstrip("\r")
    if not newline or not 3 <= len(boundary) <= 200 or " " in boundary:
        return None
    parts = text.split(boundary)
    if parts[0].strip(_WS) or parts[-1].strip(_WS) not in ("--", ""):
        return None
    form: dict[str, object] = {}
    for part in parts[1:-1]:
        match = _MULTIPART_PART.match(part)
        if match is None:
            return None
        _add(form, match.group(1), match.group(2))
    return form or None


def _csv_records(text: str, delimiter: str) -> Iterator[list[str]]:
    """The records as the caller reads them (a malformed one raises csv.Error there, in its try).
    A generator function, not a generator expression: compiled, the latter is read at once."""
    for record in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True):
        if record:  # blank lines are skipped
            yield record


def _is_header_field(field: str) -> bool:
    return 0 < len(field) <= 128 and _CSV_HEADER_FIELD.match(field) is not None


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

_TYPE_NAMES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    Decimal: "number",
    bool: "boolean",
    type(None): "null",
}
_SEGMENTS: dict[str, str] = {}  # key -> path segment; keys repeat across rows, so cache them


def _type_name(value: object) -> str:
    name = _TYPE_NAMES.get(type(value))
    if name is not None:
        return name
    for kind in (bool, dict, list, tuple, str, int, float, Decimal):  # subclasses
        if isinstance(value, kind):
            return "array" if kind is tuple else _TYPE_NAMES[kind]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _segment(key: object) -> str:
    key = key if isinstance(key, str) else str(key)
    segment = _SEGMENTS.get(key)
    if segment is None:
        segment = key if _PLAIN_KEY.match(key) else json.dumps(key)
        if len(key) <= 64:  # payload keys repeat across rows; huge ones are not worth keeping
            if len(_SEGMENTS) >= 65_536:
                _SEGMENTS.clear()
            _SEGMENTS[key] = segment
    return segment


# A null says nothing about a field's type, and optional text fields (messages, failure codes,
# descriptions) are null in some replies of a payload type and strings in others: in shape paths a
# null counts as a string, so the two stay one shape (one LLM question, not two). Shapes without
# nulls are unchanged; a field that is sometimes null and sometimes a number or object still splits.
_SHAPE_TYPE_NAMES: dict[type, str] = {**_TYPE_NAMES, type(None): "string"}
_SUFFIXES: dict[type, str] = {kind: ":" + name for kind, name in _SHAPE_TYPE_NAMES.items()}


def _collect_paths(obj: object, fmt: str) -> set[str]:
    """Shape paths of a decoded ``obj`` of format ``fmt``; deeper than MAX_DEPTH is ``_Fail``.

    Hot path (every row, ~25 nodes each): a recursive walk, its depth bounded by MAX_DEPTH, with the
    segment and ":type" strings looked up in dictionaries and one concatenation per node. The two
    walkers repeat their child dispatch on purpose: a shared helper would cost a call per node.
    (``shape_paths``, for objects that did not come through decode, uses
    ``_collect_paths_iterative``, which has no depth limit.)
    """
    paths: set[str] = set()
    if isinstance(obj, dict):
        _walk_object(obj, "", 1, paths.add, fmt)
    elif isinstance(obj, (list, tuple)):
        _walk_items(obj, "[]", 1, paths.add, fmt)
    return paths


def _refuse_depth(fmt: str) -> None:
    raise _Fail(fmt, _too_deep(fmt.upper()))


def _suffix(value: object) -> str:
    return _SUFFIXES.get(type(value)) or ":" + _shape_type_name(value)


def _shape_type_name(value: object) -> str:
    return "string" if value is None else _type_name(value)


def _walk_object(node: dict[object, object], prefix: str, depth: int, add: Callable[[str], None],
                 fmt: str) -> None:
    if depth > MAX_DEPTH:
        _refuse_depth(fmt)
    segments, suffixes = _SEGMENTS, _SUFFIXES
    for key, value in node.items():
        path = prefix + (segments.get(key) or _segment(key))  # type: ignore[call-overload]
        suffix = suffixes.get(type(value)) or _suffix(value)
        add(path + suffix)
        if suffix == ":object":
            if value:
                _walk_object(value, path + ".", depth + 1, add, fmt)  # type: ignore[arg-type]
        elif suffix == ":array" and value:
            _walk_items(value, path + "[]", depth + 1, add, fmt)  # type: ignore[arg-type]


def _walk_items(items: list[object] | tuple[object, ...], path: str, depth: int, add: Callable[[str], None],
                fmt: str) -> None:
    if depth > MAX_DEPTH:
        _refuse_depth(fmt)
    suffixes = _SUFFIXES
    for value in items:
        suffix = suffixes.get(type(value)) or _suffix(value)
        add(path + suffix)
        if suffix == ":object":
            if value:
                _walk_object(value, path + ".", depth + 1, add, fmt)  # type: ignore[arg-type]
        elif suffix == ":array" and value:
            _walk_items(value, path + "[]", depth + 1, add, fmt)  # type: ignore[arg-type]


def _collect_paths_iterative(obj: object) -> set[str]:
    """Shape paths of ``obj`` at any depth, without recursion (``shape_paths`` on objects that did
    not come through decode). Same paths as ``_collect_paths``."""
    paths: set[str] = set()
    if not isinstance(obj, (dict, list, tuple)):
        return paths
    segments, type_names = _SEGMENTS, _SHAPE_TYPE_NAMES
    stack: list[tuple[object, str]] = [(obj, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            prefix = path + "." if path else ""
            children: Iterator[tuple[str, object]] = (
                (prefix + (segments.get(key) or _segment(key)), value)
                for key, value in node.items()
            )
        else:
            item_path = path + "[]"
            children = ((item_path, value) for value in node)  # type: ignore[attr-defined]
        for child_path, value in children:
            kind = type_names.get(type(value)) or _shape_type_name(value)
            paths.add(child_path + ":" + kind)
            if kind == "object" or kind == "array":
                stack.append((value, child_path))
    return paths


#: (format, frozenset of paths) -> shape key. Rows of one shape repeat endlessly, and hashing a
#: frozenset of already-hashed strings costs a fraction of sorting, joining and sha256.
_KEYS: dict[tuple[str, frozenset[str]], str] = {}
_KEYS_MAX = 16_384


def _hash(fmt: str, paths: set[str]) -> str:
    cache_key = (fmt, frozenset(paths))
    key = _KEYS.get(cache_key)
    if key is None:
        text = fmt + "|" + "\n".join(sorted(paths))
        key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[cache_key] = key
    return key
