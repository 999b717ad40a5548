"""JSON that keeps money exact: Decimals in, bare JSON numbers out, never a float in between."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_dumps_str = json.JSONEncoder(ensure_ascii=False).encode


def dumps_exact(obj: Any) -> str:
    """Serialize dicts/lists/scalars; Decimal becomes its exact decimal text (NaN/Infinity become null)."""
    if isinstance(obj, str):
        return _dumps_str(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, Decimal):
        return str(obj) if obj.is_finite() else "null"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        raise TypeError("float in a paynorm JSON document: use Decimal for exact amounts")
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_dumps_str(str(k))}:{dumps_exact(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps_exact(v) for v in obj) + "]"
    return _dumps_str(str(obj))


def loads_exact(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)
