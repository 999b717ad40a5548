"""The LLM step: one validated mapping rule per payload shape no rule knows (never the values of a
row). :mod:`.samples` finds what waits and picks redacted samples (:mod:`.redact`), :mod:`.prompt`
builds the request, :mod:`.client` talks to the OpenAI-compatible endpoint and treats its answer as
untrusted input, :mod:`.propose` turns an answer into a rule, validates it with the one rule
validation and the build's own compiler, stores it and runs the step. Details in
:mod:`consumer.llm.propose`."""

from . import redact
from .client import MAX_ANSWER_CHARS, MAX_ANSWER_DEPTH, MAX_REPORTED_TOKENS, CallResult
from .prompt import LlmError, prompt_hash, response_format, response_schema
from .propose import (LLM_RULE_PRIORITY, LOCK_KEY, Evaluation, LlmRunResult, ShapeResult, answer_to_rule, approve,
                      export_yaml, policy_errors, preview_rule, reject, render_review, review, run_llm_step,
                      validate_llm_rule)
from .samples import Context, Sample, Shape, pick_samples, unmatched_shapes, waiting_shapes

__all__ = [
    "CallResult", "Context", "Evaluation", "LLM_RULE_PRIORITY", "LOCK_KEY", "LlmError", "LlmRunResult",
    "MAX_ANSWER_CHARS", "MAX_ANSWER_DEPTH", "MAX_REPORTED_TOKENS", "Sample", "Shape", "ShapeResult",
    "answer_to_rule", "approve", "export_yaml", "pick_samples", "policy_errors", "preview_rule", "prompt_hash",
    "redact", "reject", "render_review", "response_format", "response_schema", "review", "run_llm_step",
    "unmatched_shapes", "validate_llm_rule", "waiting_shapes",
]
