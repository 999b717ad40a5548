"""Mapping rules: one payload shape -> one canonical payment event, as data.

A rule is a YAML document (``mappings/<id>.yml``, format in mappings/README.md, JSON Schema in
mappings/schema.json) with fixtures (``mappings/fixtures/``). This package reads them
(:mod:`.files`, :mod:`.model`), checks them with ONE validation for built-in, hand-written and
LLM-proposed rules alike (:mod:`.validate`, against the provider knowledge of :mod:`.conventions`),
stores them in ``paynorm.mappings`` (:mod:`.store`) and helps authors (:mod:`.authoring`). The one
rule compiler is dbt: the macros turn the active rules into SQL.
"""

from . import authoring
from .conventions import Convention, amount_conventions, canonical_values, convention_for, vocabulary_status
from .files import DEFAULT_DIR, FIXTURES_SUBDIR, RuleFile, fixture_row_image, load_fixtures, load_rule_files
from .model import (CANONICAL_RULE_FIELDS, DECLINE_CATEGORIES, EVENT_TYPES, ORIGINS, RULE_STATUSES, STATUSES,
                    MappingError, Rule, document, parse_rule, rule_hash, rule_to_yaml)
from .store import (SyncResult, active_ruleset_hash, ddl, ensure_schema, get_rule, list_rules, set_status, sync,
                    upsert_rule)
from .validate import (MAP_FIELDS, check_money, check_semantics, check_sql, collect_jsonpaths, fixture_overlaps,
                       load_schema, schema_errors, validate_files, validate_rule)

__all__ = [
    "authoring",
    "CANONICAL_RULE_FIELDS", "DECLINE_CATEGORIES", "DEFAULT_DIR", "EVENT_TYPES", "FIXTURES_SUBDIR", "MAP_FIELDS",
    "ORIGINS", "RULE_STATUSES", "STATUSES", "Convention", "MappingError", "Rule", "RuleFile", "SyncResult",
    "active_ruleset_hash", "amount_conventions", "canonical_values", "check_money", "check_semantics", "check_sql",
    "collect_jsonpaths", "convention_for", "ddl", "document", "ensure_schema", "fixture_overlaps",
    "fixture_row_image", "get_rule", "list_rules", "load_fixtures", "load_rule_files", "load_schema", "parse_rule",
    "rule_hash", "rule_to_yaml", "schema_errors", "set_status", "sync", "upsert_rule", "validate_files",
    "validate_rule", "vocabulary_status",
]
