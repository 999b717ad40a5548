"""A mapping rule: the document (YAML in mappings/, JSON in paynorm.mappings), its canonical
vocabulary, and the typed view every other module reads instead of poking into dicts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

# libyaml's safe loader is ~10x faster than the pure-Python one (hundreds of rule files per sync)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = ["MappingError", "Rule", "parse_rule", "rule_hash", "rule_to_yaml", "document",
           "CANONICAL_RULE_FIELDS", "STATUSES", "EVENT_TYPES", "DECLINE_CATEGORIES", "ORIGINS", "RULE_STATUSES"]

CANONICAL_RULE_FIELDS = (
    "transaction_id", "merchant_id", "merchant_name", "merchant_country", "event_type", "status",
    "provider_status_raw", "decline_category", "response_code_raw", "error_message", "amount",
    "currency", "payment_method", "card_network", "issuer_country", "latency_ms", "event_at", "is_test",
)
STATUSES = ("approved", "declined", "error", "pending", "cancelled", "expired")
EVENT_TYPES = ("authorization", "capture", "sale", "refund", "void", "chargeback", "verification", "unknown")
DECLINE_CATEGORIES = (
    "insufficient_funds", "do_not_honor", "fraud_suspected", "lost_stolen_card", "expired_card",
    "invalid_card_data", "authentication_failed", "not_permitted", "limit_exceeded", "issuer_unavailable",
    "processor_error", "merchant_config_error", "other",
)
ORIGINS = ("builtin", "llm", "user")
RULE_STATUSES = ("active", "proposed", "rejected")


class MappingError(ValueError):
    """A rule file cannot be read or a rule is invalid; the message says why."""


@dataclass(frozen=True)
class Rule:
    """A rule parsed once: typed attributes over its document (the JSON the dbt macros compile).
    ``Rule.parse`` checks it against mappings/schema.json and raises MappingError with every reason."""

    id: str
    description: str
    provider: dict[str, Any]
    formats: tuple[str, ...]
    match: str
    priority: int
    status: str
    fields: dict[str, Any]
    api: str | None
    row_match: str | None
    document: dict[str, Any]

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> "Rule":
        from .validate import schema_errors

        errors = schema_errors(doc)
        if errors:
            raise MappingError(f"rule {doc.get('id')!r}: " + "; ".join(errors))
        return cls(id=str(doc["id"]), description=str(doc["description"]).strip(), provider=dict(doc["provider"]),
                   formats=tuple(doc["formats"]), match=str(doc["match"]), priority=int(doc.get("priority", 100)),
                   status=str(doc.get("status", "active")), fields=dict(doc["fields"]), api=doc.get("api"),
                   row_match=doc.get("row_match"), document=doc)

    @property
    def provider_const(self) -> str | None:
        """The provider the rule is anchored to, or None when it reads it from the data."""
        return self.provider.get("const")

    @property
    def hash(self) -> str:
        return rule_hash(self.document)


def document(rule: "Rule | dict[str, Any]") -> dict[str, Any]:
    """The rule document of a Rule or of a plain dict (LLM answers, tests)."""
    return rule.document if isinstance(rule, Rule) else rule


# -- reading ------------------------------------------------------------------------------------------


def _normalize(rule: Any, where: str = "") -> Any:
    """YAML quirks: map keys that YAML typed as numbers become text; boolean keys are refused."""
    if isinstance(rule, dict):
        out: dict[str, Any] = {}
        for k, v in rule.items():
            if isinstance(k, bool):
                raise MappingError(f"{where}: key {k!r} was read by YAML as a boolean (yes/no/on/off/true/false); "
                                   f"quote it")
            if isinstance(k, (int, float)):
                k = str(k)
            if k is None:
                raise MappingError(f"{where}: a null key (~ or empty); quote it")
            out[str(k)] = _normalize(v, f"{where}.{k}" if where else str(k))
        return out
    if isinstance(rule, list):
        return [_normalize(v, f"{where}[{i}]") for i, v in enumerate(rule)]
    return rule


def parse_rule(text: str, *, name: str = "<rule>") -> dict[str, Any]:
    """Parse one YAML (or JSON) rule document into a dict with text map keys."""
    try:
        doc = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader (libyaml's when built)
    except yaml.YAMLError as e:
        raise MappingError(f"{name}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise MappingError(f"{name}: a rule must be a mapping (YAML object)")
    return _normalize(doc, "")


def rule_hash(rule: dict[str, Any]) -> str:
    """Stable hash of a rule's content (canonical JSON: sorted keys, no whitespace)."""
    canon = json.dumps(rule, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.md5(canon.encode()).hexdigest()


def rule_to_yaml(rule: dict[str, Any]) -> str:
    """A rule as YAML (for export of LLM rules into mappings/)."""
    return yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, width=120)
