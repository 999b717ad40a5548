"""The request: the versioned prompt (prompts/mapping_rule_v1.md), the strict JSON-schema response
format derived from mappings/schema.json, the messages of one question and of its repair round."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .. import rules
from ..decode import shape_paths
from ..jsonutil import dumps_exact
from ..resources import prompts_dir
from ..settings import Settings
from . import redact
from .samples import Sample, Shape, redacted_samples

__all__ = ["LlmError", "LLM_CONST_FIELDS", "CONST_MUST_APPEAR", "PROMPT_PATH", "response_schema", "response_format", "prompt_hash", "build_messages", "build_request",
           "repair_messages", "estimate_tokens"]

PROMPT_PATH = prompts_dir() / "mapping_rule_v1.md"
# Fields an LLM rule may hold as a constant (everything else must come from the payload).
LLM_CONST_FIELDS = ("currency", "event_type", "payment_method", "card_network")
# Text constants that must appear in the samples the model saw.
CONST_MUST_APPEAR = ("currency", "payment_method", "card_network")


class LlmError(RuntimeError):
    """The LLM step cannot run (configuration, another step running)."""


def _prompt_sections(path: str = str(PROMPT_PATH)) -> dict[str, str]:
    text = Path(path).read_text()
    parts = re.split(r"^=== (\w+) ===[ \t]*\n", text, flags=re.M)
    sections = {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts) - 1, 2)}
    missing = {"system", "user", "repair"} - sections.keys()
    if missing:
        raise LlmError(f"{path}: missing prompt section(s) {sorted(missing)}")
    return sections


def _fill(template: str, values: dict[str, Any]) -> str:
    out = template
    for k, v in values.items():
        out = out.replace("{{" + k + "}}", str(v))
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _strict_value(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A strict-mode schema for one property of the rule schema (enums kept, patterns dropped)."""
    if "$ref" in prop:
        prop = defs[prop["$ref"].split("/")[-1]]
    if "enum" in prop:
        return {"type": "string", "enum": list(prop["enum"])}
    t = prop.get("type")
    if isinstance(t, list):  # e.g. const: [string, number] -> string
        t = "string" if "string" in t else t[0]
    if t == "boolean":
        return {"type": "boolean"}
    if t in ("integer", "number"):
        return {"type": t}
    return {"type": "string"}


def _strict_field(def_: dict[str, Any], defs: dict[str, Any], *, allow_const: bool, required: bool) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, prop in def_.get("properties", {}).items():
        if key in ("cases", "default", "vocabulary"):
            continue  # LLM rules take values from the payload: no cases, no defaults
        if key == "const" and not allow_const:
            continue
        if key == "map":
            value = _strict_value(prop.get("additionalProperties", {"type": "string"}), defs)
            props["map"] = _nullable({
                "type": "array",
                "description": "raw value (as in the payload) -> canonical value",
                "items": {"type": "object", "additionalProperties": False, "required": ["raw", "value"],
                          "properties": {"raw": {"type": "string"}, "value": value}},
            })
            continue
        props[key] = _nullable(_strict_value(prop, defs))
    obj = {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}
    return obj if required else _nullable(obj)


@functools.lru_cache(maxsize=1)
def response_schema() -> dict[str, Any]:
    """The strict JSON schema of the answer, derived from mappings/schema.json.

    ``{"mappable": bool, "reason": str, "rule": {description, provider, match, fields} | null}``;
    every canonical field is present (null when unused); field specs keep path, row_path, regex,
    map (as a list of {raw, value}), unit/format/country enums and flags; constants only where an
    LLM rule may hold one; no cases or defaults. ``id``, ``formats`` and ``priority`` are set by
    paynorm, not by the model.
    """
    schema = rules.load_schema()
    defs = schema["$defs"]
    field_props = schema["properties"]["fields"]["properties"]
    fields: dict[str, Any] = {}
    for name in rules.CANONICAL_RULE_FIELDS:
        def_ = defs[field_props[name]["$ref"].split("/")[-1]]
        fields[name] = _strict_field(def_, defs, allow_const=name in LLM_CONST_FIELDS, required=name == "status")
    provider = _strict_field(defs["provider"], defs, allow_const=True, required=True)
    rule = {
        "type": "object", "additionalProperties": False,
        "required": ["description", "provider", "match", "fields"],
        "properties": {
            "description": {"type": "string", "description": "What the shape is (provider, object, operation)."},
            "provider": provider,
            "match": {"type": "string", "description": "SQL/JSON path filter: '$ ? (<condition>)'."},
            "fields": {"type": "object", "additionalProperties": False, "required": list(fields),
                       "properties": fields},
        },
    }
    return {
        "type": "object", "additionalProperties": False, "required": ["mappable", "reason", "rule"],
        "properties": {
            "mappable": {"type": "boolean", "description": "false when the samples are not payment events."},
            "reason": {"type": "string"},
            "rule": _nullable(rule),
        },
    }


def prompt_hash() -> str:
    """Hash of the prompt file and the response schema: a new value retries unmappable shapes."""
    h = hashlib.sha256(PROMPT_PATH.read_bytes())
    h.update(json.dumps(response_schema(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def response_format() -> dict[str, Any]:
    return {"type": "json_schema",
            "json_schema": {"name": "paynorm_mapping_rule", "strict": True, "schema": response_schema()}}


def build_messages(shape: Shape, samples: list[Sample]) -> list[dict[str, str]]:
    """System message (no payload) + user message with the redacted samples between data markers."""
    sec = _prompt_sections()
    lines = [dumps_exact(s) for s in redacted_samples(samples)]
    body = "\n".join(lines)
    nonce = hashlib.sha256(body.encode()).hexdigest()[:12]  # never inside the data it delimits
    paths = sorted(shape_paths(samples[0].payload)) if samples else []
    user = _fill(sec["user"], {
        "SHAPE_KEY": shape.shape_key, "PAYLOAD_FORMAT": shape.payload_format, "ROW_COUNT": shape.rows,
        "SHAPE_PATHS": "\n".join(f"  {redact.redact_text(p, max_len=200)}" for p in paths[:300]),
        "NONCE": nonce, "SAMPLE_COUNT": len(lines), "SAMPLES": body,
    })
    return [{"role": "system", "content": sec["system"]}, {"role": "user", "content": user}]


def build_request(settings: Settings, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The exact body sent to POST /chat/completions."""
    return {"model": settings.llm_model, "messages": messages, "response_format": response_format(),
            "temperature": 0, "max_completion_tokens": settings.llm_max_output_tokens}


def repair_messages(messages: list[dict[str, str]], answer: str, errors: list[str]) -> list[dict[str, str]]:
    text = "\n".join(f"- {redact.redact_text(e, max_len=400)}" for e in errors[:25])
    return [*messages, {"role": "assistant", "content": answer[:20000]},
            {"role": "user", "content": _fill(_prompt_sections()["repair"], {"ERRORS": text})}]


def estimate_tokens(request: dict[str, Any]) -> int:
    return len(json.dumps(request)) // 4 + request.get("max_completion_tokens", 0) // 8
