"""The compiled payload decoder (mypyc, setup.py): built by the install, used by the landing, the
very results of consumer/decode.py, and never used once it is older than that source (no DB)."""

from __future__ import annotations

import json
import logging
import os
from decimal import Decimal
from pathlib import Path

import pytest

from consumer import decode, demo
from consumer.landing import decoder

CORPUS = Path(__file__).parent / "corpus" / "real_payloads.jsonl"

pytestmark = pytest.mark.skipif(os.environ.get("PAYNORM_COMPILE") == "0",
                                reason="PAYNORM_COMPILE=0: installed without the compiled decoder")


@pytest.fixture(scope="module")
def compiled():  # noqa: ANN201 - the compiled module has no stubs
    try:
        from consumer import _cdecode  # type: ignore[attr-defined]
    except ImportError:
        pytest.fail("consumer._cdecode is missing: `make install` (pip install -e .) builds it with mypyc")
    return _cdecode


def _inputs() -> list[tuple[object, bool]]:
    """Every real payload of the corpus (as a jsonb column and as text), 3,000 demo payloads, and
    inputs no test payload has: a non-string, a non-dict JSON value, deep arrays."""
    pairs: list[tuple[object, bool]] = []
    for line in CORPUS.read_text().splitlines():
        data = json.loads(line, parse_float=Decimal)["record"]["data"]
        text = demo.dumps_exact(data)
        pairs += [(text, True), (data if isinstance(data, str) else text, False)]
    pairs += [(demo.dumps_exact(r["data"]), True) for r in demo.generate_records(3000, seed=11)]
    pairs += [(b"bytes", True), (12, True), ("[1, [2, [3]]]", True), ("true", True), ("[" * 300 + "]" * 300, False)]
    return pairs


def test_the_install_built_it_and_the_landing_uses_it(compiled) -> None:  # noqa: ANN001
    assert compiled.__file__.endswith(".so")
    assert decoder.payload_decoder.__wrapped__() is compiled.decode_payload


def test_it_decodes_exactly_as_the_source_does(compiled) -> None:  # noqa: ANN001
    inputs = _inputs()
    assert len(inputs) > 3500
    for raw, is_json in inputs:
        want = decode.decode_payload(raw, is_json=is_json)  # type: ignore[arg-type]
        got = compiled.decode_payload(raw, is_json=is_json)
        assert (got.payload, got.payload_format, got.decode_error, got.shape_key) == (
            want.payload, want.payload_format, want.decode_error, want.shape_key), raw


def test_a_compiled_decoder_older_than_the_source_is_not_used(compiled, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(compiled, "SOURCE_SHA256", "0" * 64)
    with caplog.at_level(logging.WARNING, logger="consumer.landing.decoder"):
        assert decoder.payload_decoder.__wrapped__() is decode.decode_payload
    assert "built from another consumer/decode.py" in caplog.text


def test_it_can_be_turned_off(compiled, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PAYNORM_COMPILED_DECODER", "0")
    assert decoder.payload_decoder.__wrapped__() is decode.decode_payload
