"""Tests for consumer.decode: every payload shape the lake can hold, and every trap (no DB)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from consumer.decode import (
    MAX_DEPTH,
    MAX_TEXT_CHARS,
    MAX_XML_ELEMENTS,
    Decoded,
    decode_payload,
    shape_key,
    shape_paths,
)


@pytest.fixture(autouse=True)
def _compiled_decoder_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every payload these tests decode is decoded by the compiled decoder too (when it is built:
    tests/test_compiled_decoder.py), which must return the very same result."""
    try:
        from consumer import _cdecode  # type: ignore[attr-defined]
    except ImportError:
        return
    source = decode_payload

    def both(raw: object, **kwargs: object) -> Decoded:
        expected = source(raw, **kwargs)  # type: ignore[arg-type]
        got = _cdecode.decode_payload(raw, **kwargs)
        assert (got.payload, got.payload_format, got.decode_error, got.shape_key) == (
            expected.payload, expected.payload_format, expected.decode_error, expected.shape_key), raw
        return expected

    monkeypatch.setitem(globals(), "decode_payload", both)


def payload_of(result: Decoded) -> dict:
    """The decoded payload as an object (numbers as Decimal), asserting it is one."""
    assert result.payload is not None, result
    obj = json.loads(result.payload, parse_float=Decimal)
    assert isinstance(obj, dict)
    return obj


def assert_jsonb_safe(result: Decoded) -> None:
    """What the landing COPY needs: no NUL anywhere, payload parses without NaN/Infinity."""
    for text in (result.payload, result.decode_error):
        if text is not None:
            assert "\x00" not in text and "\\u0000" not in text
    if result.payload is not None:
        json.loads(result.payload, parse_constant=lambda name: pytest.fail(f"{name} in payload"))


# --- the brief's three examples --------------------------------------------------------------

STRIPE = (
    '{"amt": 25.84, "p_id": "Stripe", "exec_ms": 402, "st_code": 1, '
    '"server_txt": "00_SUCCESS", "card_country": "ES"}'
)
XML_BLOB = json.dumps(
    {
        "type": "XML_BLOB",
        "content": "<Tx><MerchID>m1</MerchID><Val>129.97</Val><Stat>APPROVED</Stat></Tx>",
    }
)
PAYU = (
    '{"meta": {"code": 200, "latency": 741}, "status": "APPROVED", "provider": "PayU", '
    '"origin_iso": "AR", "amount_details": {"value": 422.45, "currency": "USD"}}'
)


def test_stripe_like_object_is_passed_through_verbatim() -> None:
    """A JSON object is landed as its own text: no re-serialization that could touch numbers."""
    result = decode_payload(STRIPE, is_json=True)
    assert result == Decoded(STRIPE, "json", None, shape_key("json", json.loads(STRIPE)))
    assert payload_of(result)["amt"] == Decimal("25.84")


def test_xml_blob_wrapper_is_decoded_as_xml() -> None:
    """{"type": "XML_BLOB", "content": "<Tx>..."} lands as the XML converted to JSON."""
    result = decode_payload(XML_BLOB, is_json=True)
    assert result.payload_format == "xml"
    assert result.decode_error is None
    assert payload_of(result) == {"Tx": {"MerchID": "m1", "Val": "129.97", "Stat": "APPROVED"}}
    assert result.shape_key == shape_key("xml", payload_of(result))


def test_payu_like_nested_object_shape_paths() -> None:
    """Nested objects keep their numbers exact and give dotted shape paths."""
    result = decode_payload(PAYU, is_json=True)
    assert result.payload == PAYU and result.payload_format == "json"
    assert payload_of(result)["amount_details"]["value"] == Decimal("422.45")
    assert shape_paths(json.loads(PAYU)) == {
        "meta:object",
        "meta.code:number",
        "meta.latency:number",
        "status:string",
        "provider:string",
        "origin_iso:string",
        "amount_details:object",
        "amount_details.value:number",
        "amount_details.currency:string",
    }


# --- wrappers and JSON inside strings ----------------------------------------------------------


@pytest.mark.parametrize(
    "wrapper",
    [
        {"format": "xml", "payload": "<Tx><Val>1.00</Val></Tx>"},
        {"raw": "<Tx><Val>1.00</Val></Tx>"},
        {"content_type": "text/xml", "encoding": "utf-8", "body": "  <Tx><Val>1.00</Val></Tx>\n"},
    ],
)
def test_other_xml_wrappers(wrapper: dict) -> None:
    """Every documented wrapper key leads to the inner XML."""
    result = decode_payload(json.dumps(wrapper), is_json=True)
    assert (result.payload_format, result.decode_error) == ("xml", None)
    assert payload_of(result) == {"Tx": {"Val": "1.00"}}


def test_wrapper_around_json_csv_and_nvp() -> None:
    """A wrapper's inner string may hold any structured format; the row takes the inner format."""
    inner_json = decode_payload(json.dumps({"data": '{"a": 1.10}'}), is_json=True)
    assert (inner_json.payload, inner_json.payload_format) == ('{"a": 1.10}', "json")
    form = json.dumps({"body": "response=2&responsetext=DECLINE"})
    inner_nvp = decode_payload(form, is_json=True)
    assert inner_nvp.payload_format == "nvp"
    assert payload_of(inner_nvp) == {"response": "2", "responsetext": "DECLINE"}
    inner_csv = decode_payload(json.dumps({"content": "id,amt\n7,1.5"}), is_json=True)
    assert (inner_csv.payload_format, payload_of(inner_csv)) == ("csv", {"id": "7", "amt": "1.5"})


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "charge", "data": {"amount": 100}},  # Stripe-event-like: data is an object
        {"body": "Approved, thank you"},  # plain text is not a wrapped format
        {"type": "XML_BLOB", "content": "<Tx/>", "amount": 1},  # a key outside the wrapper set
        {"raw": "<a/>", "body": "<b/>"},  # two content strings: ambiguous
    ],
)
def test_objects_that_are_not_wrappers_stay_json(obj: dict) -> None:
    """Only a pure wrapper around one structured string is unwrapped; anything else is kept."""
    raw = json.dumps(obj)
    assert decode_payload(raw, is_json=True) == Decoded(raw, "json", None, shape_key("json", obj))


def test_broken_xml_inside_wrapper_is_an_xml_error() -> None:
    """A wrapped blob that looks like XML but is not well-formed is reported, not hidden as JSON."""
    result = decode_payload(json.dumps({"type": "XML_BLOB", "content": "<Tx><Val>1"}), is_json=True)
    assert result.payload_format == "xml" and result.payload is None
    assert result.decode_error and result.decode_error.startswith("XML: ")


def test_json_text_inside_a_json_string() -> None:
    """A jsonb string holding JSON text is parsed; its numbers stay exact."""
    raw = json.dumps('{"amount": 25.840, "status": "ok"}')
    result = decode_payload(raw, is_json=True)
    assert (result.payload_format, result.decode_error) == ("json", None)
    assert "25.840" in result.payload
    assert payload_of(result) == {"amount": Decimal("25.840"), "status": "ok"}


def test_json_text_in_a_text_column_and_double_encoded() -> None:
    """Plain text holding JSON, or JSON encoded twice, decodes to the same object."""
    text = '{"amount": 25.840}'
    assert decode_payload(text, is_json=False).payload == text
    twice = decode_payload(json.dumps(json.dumps(text)), is_json=True)
    assert (twice.payload, twice.payload_format) == (text, "json")


# --- exact numbers -------------------------------------------------------------------------------


def test_exact_decimals_are_preserved_everywhere() -> None:
    """Money must never pass through float: 25.840 stays "25.840" and 1e2 stays "1e2"."""
    raw = '{"amt": 25.840, "big": 12345678901234567890.123456789, "exp": 1e2}'
    assert decode_payload(raw, is_json=True).payload == raw
    as_array = decode_payload("[25.840, 0.1]", is_json=True)
    assert as_array.payload == '{"items":[25.840, 0.1]}'
    assert payload_of(as_array) == {"items": [Decimal("25.840"), Decimal("0.1")]}


def test_top_level_array_becomes_items() -> None:
    """A top-level array is wrapped as {"items": [...]} so the payload is always an object."""
    result = decode_payload('[{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]', is_json=False)
    assert result.payload_format == "json"
    assert payload_of(result) == {"items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]}
    assert shape_paths(payload_of(result)) == {
        "items:array",
        "items[]:object",
        "items[].sku:string",
        "items[].qty:number",
    }


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1e999999}', "numeric range"),
        ('{"a": 1.5e-20000}', "numeric range"),
        ('{"b": "x", "a": 1.5E-20000}', "numeric range"),
        ('{"a": 0.' + "0" * 16_400 + "1}", "numeric range"),  # no exponent, but a scale past 16383
    ],
)
def test_numbers_jsonb_cannot_store_are_refused(raw: str, fragment: str) -> None:
    """NaN/Infinity and out-of-range numbers would make the landing COPY fail: refuse the row."""
    result = decode_payload(raw, is_json=False)
    assert (result.payload, result.payload_format) == (None, "json")
    assert result.decode_error.startswith("JSON: ") and fragment in result.decode_error


# --- XML -----------------------------------------------------------------------------------------


def test_xml_namespaces_attributes_and_repeats() -> None:
    """Local names only, @attributes, #text next to attributes, repeats as arrays, empty = null."""
    xml = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<anet:createTransactionResponse xmlns:anet="AnetApi/xml/v1/schema/AnetApiSchema.xsd" '
        'xmlns:x="urn:x" x:version="2">\n'
        "  <anet:messages><anet:resultCode>Ok</anet:resultCode></anet:messages>\n"
        '  <anet:amount currency="USD">1.00</anet:amount>\n'
        "  <anet:error>first</anet:error>\n"
        "  <anet:error>second</anet:error>\n"
        "  <anet:error/>\n"
        "  <anet:note>mixed <b>bold</b> text</anet:note>\n"
        "</anet:createTransactionResponse>"
    )
    result = decode_payload(xml, is_json=False)
    assert (result.payload_format, result.decode_error) == ("xml", None)
    assert payload_of(result) == {
        "createTransactionResponse": {
            "@version": "2",
            "messages": {"resultCode": "Ok"},
            "amount": {"@currency": "USD", "#text": "1.00"},
            "error": ["first", "second", None],
            "note": {"#text": "mixed text", "b": "bold"},
        }
    }


def test_billion_laughs_is_refused() -> None:
    """Entity declarations are refused before parsing: nothing is ever expanded."""
    lol = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
        + "]><lolz>&lol9;</lolz>"
    ).replace("&lol0;", "&lol;")
    result = decode_payload(lol, is_json=False)
    assert result == Decoded(None, "xml", "XML: DOCTYPE/entity declarations refused", None)


def test_xxe_never_reads_local_files() -> None:
    """An external entity pointing at /etc/passwd is refused; nothing of the file leaks out."""
    xxe = '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    for raw, is_json in [(xxe, False), (json.dumps({"type": "XML_BLOB", "content": xxe}), True)]:
        result = decode_payload(raw, is_json=is_json)
        assert result.payload is None and result.payload_format == "xml"
        assert result.decode_error == "XML: DOCTYPE/entity declarations refused"
        assert "root:" not in repr(result)


def test_undeclared_entity_is_not_resolved() -> None:
    """Without a DTD an entity reference is an error, never a file read or an empty string."""
    result = decode_payload("<x>&e;</x>", is_json=False)
    assert result.payload is None and result.decode_error.startswith("XML: ")


def test_external_doctype_is_accepted_and_never_loaded() -> None:
    """Worldpay replies name their DTD by URL: the document is read, the DTD never fetched."""
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE paymentService PUBLIC '
           '"-//WorldPay//DTD WorldPay PaymentService v1//EN"\n  "http://dtd.worldpay.com/paymentService_v1.dtd">\n'
           '<paymentService version="1.4"><reply><ok/></reply></paymentService>')
    result = decode_payload(xml, is_json=False)
    assert payload_of(result) == {"paymentService": {"@version": "1.4", "reply": {"ok": None}}}


def test_external_doctype_cannot_smuggle_an_entity() -> None:
    """With a DOCTYPE lxml would keep an undeclared entity as a node: it is refused, never dropped."""
    for xml in ('<!DOCTYPE x SYSTEM "file:///etc/passwd"><x>&e;</x>',
                '<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x><y>&e;</y></x>'):
        result = decode_payload(xml, is_json=False)
        assert result.payload is None and result.decode_error.startswith("XML: "), result


def test_stray_characters_after_the_root_are_ignored_markup_is_not() -> None:
    """A lone quote after </response> (Realex test replies) is not part of the document; a
    second element is."""
    assert payload_of(decode_payload('<response><result>00</result></response>"', is_json=False)) == {
        "response": {"result": "00"}}
    assert decode_payload("<a>1</a><b>2</b>", is_json=False).decode_error.startswith("XML: Extra content")


def test_unterminated_xml_is_an_error() -> None:
    """Truncated XML lands with an XML error and no payload."""
    result = decode_payload("<Tx><Val>129.97</Val>", is_json=False)
    assert (result.payload, result.payload_format, result.shape_key) == (None, "xml", None)
    assert result.decode_error.startswith("XML: ")


def test_xml_depth_and_element_limits() -> None:
    """Deep or huge XML documents are refused with a reason, not converted."""
    deep = "<a>" * (MAX_DEPTH + 1) + "</a>" * (MAX_DEPTH + 1)
    too_deep = f"XML: nesting deeper than {MAX_DEPTH} levels"
    assert decode_payload(deep, is_json=False).decode_error == too_deep
    wide = "<r>" + "<i/>" * MAX_XML_ELEMENTS + "</r>"
    result = decode_payload(wide, is_json=False)
    assert result.payload is None
    assert result.decode_error == f"XML: more than {MAX_XML_ELEMENTS} elements"
    fine = "<a>" * MAX_DEPTH + "x" + "</a>" * MAX_DEPTH
    assert decode_payload(fine, is_json=False).decode_error is None


# --- CSV, name=value pairs, text -----------------------------------------------------------------


def test_csv_single_row() -> None:
    """One data row becomes one flat object keyed by the header."""
    result = decode_payload("id,amount,currency\ntx1,25.840,EUR\n", is_json=False)
    assert result.payload_format == "csv"
    assert payload_of(result) == {"id": "tx1", "amount": "25.840", "currency": "EUR"}


@pytest.mark.parametrize("delimiter", [",", ";", "|", "\t"])
def test_csv_multi_row_with_each_delimiter(delimiter: str) -> None:
    """Several rows become {"rows": [...]}, whatever the delimiter; quoted fields are honoured."""
    text = delimiter.join(["id", "status", "note"]) + "\r\n"
    text += delimiter.join(["1", "APPROVED", '"a, b; c | d"']) + "\r\n"
    text += delimiter.join(["2", "DECLINED", ""]) + "\r\n"
    result = decode_payload(text, is_json=False)
    assert result.payload_format == "csv", result
    assert payload_of(result) == {
        "rows": [
            {"id": "1", "status": "APPROVED", "note": "a, b; c | d"},
            {"id": "2", "status": "DECLINED", "note": ""},
        ]
    }


def test_csv_ragged_row_is_an_error() -> None:
    """A row whose field count disagrees with the header is reported (header = row 1)."""
    result = decode_payload("a,b,c,d\n1,2,3,4\n1,2,3,4,5\n", is_json=False)
    assert result == Decoded(None, "csv", "CSV: row 3 has 5 fields, header has 4", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "response=2&responsetext=DECLINE&avs=N+match%21",
            {"response": "2", "responsetext": "DECLINE", "avs": "N match!"},
        ),
        (
            "Ds_Response=0000; Ds_Amount=1000;Ds_Currency=978",
            {"Ds_Response": "0000", "Ds_Amount": "1000", "Ds_Currency": "978"},
        ),
        (
            "x_response_code=1\nx_trans_id=60\r\nx_msg=a;b=c\n",
            {"x_response_code": "1", "x_trans_id": "60", "x_msg": "a;b=c"},
        ),
        ("a=1&a=2&b=", {"a": ["1", "2"], "b": ""}),
    ],
)
def test_name_value_pairs(text: str, expected: dict) -> None:
    """&-form (URL-decoded), ;-separated and one-pair-a-line payloads become objects."""
    result = decode_payload(text, is_json=False)
    assert (result.payload_format, result.decode_error) == ("nvp", None)
    assert payload_of(result) == expected


def test_nvp_inside_a_jsonb_string() -> None:
    """A form-encoded body stored as a jsonb string decodes like plain text."""
    result = decode_payload(json.dumps("response=1&responsetext=SUCCESS"), is_json=True)
    assert payload_of(result) == {"response": "1", "responsetext": "SUCCESS"}


def test_unencapsulated_one_line_delimited_text_stays_text() -> None:
    """A comma-separated line without encapsulation is not told apart from prose: it stays text."""
    reply = "1,1,1,This transaction has been approved.,A1B2C3,Y,2149186775,,,1.00,CC,auth_capture"
    result = decode_payload(reply, is_json=False)
    assert (result.payload_format, result.decode_error) == ("text", None)
    assert payload_of(result) == {"text": reply}


def test_headerless_encapsulated_reply_is_positional_csv() -> None:
    """Authorize.Net AIM's `$`-encapsulated reply has no header: its fields land by position,
    whatever wrapper holds it (bare string, {"raw": ...}, {"format": "csv", "payload": ...})."""
    reply = "$1$,$1$,$1$,$This transaction has been approved.$,$advE7f$,$Y$,$508141794$,$$,$1.00$"
    expected = {"records": [["1", "1", "1", "This transaction has been approved.", "advE7f", "Y", "508141794",
                             "", "1.00"]]}
    for raw in (json.dumps(reply), json.dumps({"raw": reply}), json.dumps({"format": "csv", "payload": reply})):
        result = decode_payload(raw, is_json=True)
        assert (result.payload_format, result.decode_error, payload_of(result)) == ("csv", None, expected)


def test_headerless_quoted_lines_of_different_lengths() -> None:
    """SkipJack's change-status reply: two quoted lines without a header, one record each."""
    reply = '"000386891209","0","1","" \n"000386891209","1.0000","SETTLE","SUCCESSFUL"'
    result = decode_payload(reply, is_json=False)
    assert payload_of(result) == {"records": [["000386891209", "0", "1", ""],
                                              ["000386891209", "1.0000", "SETTLE", "SUCCESSFUL"]]}


def test_csv_lines_ending_with_the_delimiter() -> None:
    """A header and rows that all end with a comma (SkipJack AuthorizeAPI): no empty column."""
    result = decode_payload('"AUTHCODE","szIsApproved","szReturnCode",\n"093223","1","1",', is_json=False)
    assert (result.payload_format, payload_of(result)) == (
        "csv", {"AUTHCODE": "093223", "szIsApproved": "1", "szReturnCode": "1"})


def test_multipart_form_data_is_name_value_pairs() -> None:
    """A multipart/form-data callback (QuickPay) becomes its parts, name -> value."""
    b = "------------------------------8a827a0e6829"
    body = (f'{b}\nContent-Disposition: form-data; name="msgtype"\n\nauthorize\n'
            f'{b}\nContent-Disposition: form-data; name="amount"\n\n123\n{b}--\n')
    result = decode_payload(json.dumps({"raw": body}), is_json=True)
    assert (result.payload_format, payload_of(result)) == ("nvp", {"msgtype": "authorize", "amount": "123"})
    assert decode_payload(f"{b}\nnot a part\n{b}--", is_json=False).payload_format == "text"


def test_free_text_is_kept_truncated() -> None:
    """Free text becomes {"text": ...}, cut at MAX_TEXT_CHARS, with a stable shape."""
    result = decode_payload("  Declined by issuer. " + "x" * 10_000, is_json=False)
    assert result.payload_format == "text"
    text = payload_of(result)["text"]
    assert len(text) == MAX_TEXT_CHARS and text.startswith("Declined by issuer.")
    assert result.shape_key == shape_key("text", {"text": "anything"})


def test_text_starting_with_bracket_that_is_not_json_is_text() -> None:
    """'[' alone does not make JSON: a log line stays text."""
    result = decode_payload("[2024-05-01] DECLINED insufficient funds", is_json=False)
    assert payload_of(result) == {"text": "[2024-05-01] DECLINED insufficient funds"}


def test_invalid_json_object_text_is_a_json_error() -> None:
    """Text starting with '{' that does not parse is a JSON error, not text."""
    result = decode_payload('{"amount": 10,', is_json=False)
    assert (result.payload, result.payload_format, result.shape_key) == (None, "json", None)
    assert result.decode_error.startswith("JSON: ")


def test_scalar_json_becomes_text_with_exact_digits() -> None:
    """A bare jsonb number keeps its exact digits as text."""
    result = decode_payload("25.840", is_json=True)
    assert (result.payload_format, payload_of(result)) == ("text", {"text": "25.840"})


@pytest.mark.parametrize(
    ("raw", "is_json"),
    [(None, True), (None, False), ("", False), (" \n\t", False), ("null", True), ('"  "', True)],
)
def test_empty_payloads(raw: str | None, is_json: bool) -> None:
    """Nothing to decode is format empty, not an error."""
    assert decode_payload(raw, is_json=is_json) == Decoded(None, "empty", None, None)


# --- limits and hostile input --------------------------------------------------------------------


def test_nul_bytes_are_removed_and_reported() -> None:
    """PostgreSQL cannot store NUL: remove it (raw or \\u0000), keep the payload, flag the row."""
    raw_nul = decode_payload("status=APPROVED\x00&amount=1", is_json=False)
    assert payload_of(raw_nul) == {"status": "APPROVED", "amount": "1"}
    escaped = decode_payload('{"msg": "ok\\u0000ok", "n": 1.50}', is_json=True)
    assert escaped.payload == '{"msg": "okok", "n": 1.50}'
    form = decode_payload("a=x%00y&b=1", is_json=False)
    assert payload_of(form) == {"a": "xy", "b": "1"}
    after_backslash = decode_payload('{"p": "\\\\\\u0000x"}', is_json=True)  # \\ then \u0000
    assert payload_of(after_backslash) == {"p": "\\x"}
    for result in (raw_nul, escaped, form, after_backslash):
        assert result.decode_error == "NUL bytes removed"
        assert result.shape_key is not None
        assert_jsonb_safe(result)


def test_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    """'\\\\u0000' is a backslash followed by text: left alone, no error."""
    raw = '{"path": "C:\\\\u0000"}'
    expected = Decoded(raw, "json", None, shape_key("json", {"path": ""}))
    assert decode_payload(raw, is_json=True) == expected


def test_lone_surrogate_escape_is_replaced() -> None:
    """jsonb refuses an unpaired \\ud800: it becomes U+FFFD; a real pair is kept."""
    result = decode_payload('{"a": "x\\ud800", "b": "\\ud83d\\ude00"}', is_json=True)
    assert payload_of(result) == {"a": "x\ufffd", "b": "\U0001f600"}
    assert result.decode_error == "invalid Unicode surrogates replaced"


def test_ten_megabytes_of_text_is_refused_without_decoding() -> None:
    """An oversized payload is reported with its size; nothing is parsed or kept."""
    raw = "a" * 10_000_000
    result = decode_payload(raw, is_json=False)
    assert result == Decoded(None, "text", "payload too large: 10000000 bytes > 1048576", None)
    xml = decode_payload("<x>" + "é" * 600_000 + "</x>", is_json=False)  # 1.2 MB in UTF-8
    assert xml.payload_format == "xml"
    assert xml.decode_error == "payload too large: 1200007 bytes > 1048576"


def test_size_limit_counts_utf8_bytes() -> None:
    """The limit is in bytes, not characters."""
    assert decode_payload("é" * 6, is_json=False, max_bytes=12).payload is not None
    too_large = decode_payload("é" * 7, is_json=False, max_bytes=12)
    assert too_large.decode_error == "payload too large: 14 bytes > 12"


@pytest.mark.parametrize("mode", ["jsonb object", "jsonb string", "plain text"])
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 10_000])
def test_deeply_nested_json_is_refused(mode: str, levels: int) -> None:
    """Nesting past the limit (even past Python's recursion limit) is an error, never a crash."""
    for doc in ('{"a":' * levels + "1" + "}" * levels, "[" * levels + "]" * levels):
        raw = json.dumps(doc) if mode == "jsonb string" else doc
        result = decode_payload(raw, is_json=mode != "plain text")
        too_deep = f"JSON: nesting deeper than {MAX_DEPTH} levels"
        assert result == Decoded(None, "json", too_deep, None)


def test_nesting_at_the_limit_is_accepted() -> None:
    """MAX_DEPTH levels are fine: the limit is not off by one."""
    raw = '{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH
    assert decode_payload(raw, is_json=True).payload == raw


def test_non_string_input_never_raises() -> None:
    """Whatever the caller passes, decode_payload reports instead of raising."""
    result = decode_payload(12345, is_json=True)  # type: ignore[arg-type]
    assert result.payload is None and result.decode_error.startswith("decode failed: TypeError")


# --- shape keys ----------------------------------------------------------------------------------


def test_shape_key_ignores_key_order_values_and_array_length() -> None:
    """Same structure, same key: the LLM is asked once per shape, not once per row."""
    a = {
        "amount": {"value": Decimal("1.5"), "currency": "EUR"},
        "items": [{"sku": "x"}],
        "ok": True,
    }
    b = {
        "ok": False,
        "items": [{"sku": "y"}, {"sku": "z"}, {"sku": "w"}],
        "amount": {"currency": "USD", "value": 900},
    }
    assert shape_key("json", a) == shape_key("json", b)
    assert decode_payload(json.dumps(b), is_json=True).shape_key == shape_key("json", a)


def test_shape_key_changes_with_type_format_or_keys() -> None:
    """A type change, another format or another key set is another shape."""
    base = {"amount": 10, "status": "ok"}
    assert shape_key("json", base) != shape_key("json", {"amount": "10", "status": "ok"})
    assert shape_key("json", base) != shape_key("nvp", base)
    assert shape_key("json", base) != shape_key("json", {"amount": 10, "state": "ok"})
    assert shape_key("json", {"a": None}) != shape_key("json", {"a": False})


def test_shape_paths_quote_keys_that_would_be_ambiguous() -> None:
    """A key containing a dot is not the same shape as a nested object."""
    assert shape_paths({"a.b": 1}) == {'"a.b":number'}
    assert shape_key("json", {"a.b": 1}) != shape_key("json", {"a": {"b": 1}})


def test_shape_key_is_stable_and_hex() -> None:
    """The key is the documented hash, so other components can recompute it."""
    import hashlib

    expected = hashlib.sha256(b"json|a:number\nb:array\nb[]:string").hexdigest()[:16]
    assert shape_key("json", {"b": ["x"], "a": 1}) == expected


def test_shape_paths_handles_any_depth_without_recursion() -> None:
    """shape_paths itself is iterative: 10k levels do not raise RecursionError."""
    obj: dict = {}
    node = obj
    for _ in range(10_000):
        node["a"] = {}
        node = node["a"]
    assert len(shape_paths(obj)) == 10_000


def test_a_field_sometimes_null_does_not_split_a_shape() -> None:
    """An optional text field null in one reply and a string in another is one payload type (one
    LLM question); a field that is sometimes a number and sometimes a string still splits."""
    base = {"id": "ch_1", "status": "failed", "failure_code": "card_declined", "amount": 100}
    assert shape_key("json", {**base, "failure_code": None}) == shape_key("json", base)
    assert decode_payload(json.dumps({**base, "failure_code": None}), is_json=True).shape_key == \
        decode_payload(json.dumps(base), is_json=True).shape_key
    assert shape_key("json", {**base, "amount": "100"}) != shape_key("json", base)
    # XML: an empty element and one with text are one shape too
    assert decode_payload("<r><msg/><code>1</code></r>", is_json=False).shape_key == \
        decode_payload("<r><msg>x</msg><code>1</code></r>", is_json=False).shape_key


def test_shape_keys_without_nulls_are_unchanged() -> None:
    """Keys are stored (paynorm.llm_shapes): payloads without nulls keep the key they always had
    (the value below was computed by the shape walk before nulls counted as strings)."""
    payload = {"id": "ch_1", "amount": 100, "status": "succeeded", "outcome": {"type": "authorized"},
               "refunds": [{"id": "r"}]}
    assert shape_key("json", payload) == "5d2ecc8800b7941f"


def test_name_value_keys_may_start_with_a_digit() -> None:
    """Sage Pay `3DSecureStatus`, MIGS `3DSstatus`: still name=value; an all-digit key is not."""
    sage = decode_payload("VPSProtocol=2.23\r\nStatus=OK\r\n3DSecureStatus=NOTCHECKED", is_json=False)
    assert (sage.payload_format, payload_of(sage)["3DSecureStatus"]) == ("nvp", "NOTCHECKED")
    assert payload_of(decode_payload("vpc_Amount=100&3DSstatus=Y", is_json=False)) == {
        "vpc_Amount": "100", "3DSstatus": "Y"}
    assert decode_payload("1=2&3=4", is_json=False).payload_format == "text"
