"""Strict JSON: every ``.json`` / ``.jsonl`` file the package and its benchmarks write is valid JSON.

JSON has no NaN or Infinity. Python's ``json.dumps`` writes them anyway (as ``NaN``, ``Infinity``),
which Python reads back but strict parsers (``jq``, JavaScript's ``JSON.parse``, Go, serde) reject.
Here a float that is not finite becomes ``null``, and ``json.dumps(..., allow_nan=False)`` guards the
rule. A dict written by :func:`write_json` also says where and why: a top-level ``"null_values"`` maps
each such value's path (``results/dice/base/px_gt_corr``) to the reason its writer gave for that key,
or to what the value was (``"NaN"``, ``"Infinity"``, ``"-Infinity"``). The key appears only when there
was such a value, and ``explain_nulls=False`` leaves it out (files read back as configs).

Tensors, numpy scalars and arrays become numbers and lists; paths and other objects become ``str``.
:func:`nulls_to_nan` turns ``null`` back into NaN for readers that compute with the numbers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["NULL_KEY", "to_jsonable", "dumps_strict", "write_json", "nulls_to_nan"]

#: The top-level key under which :func:`write_json` lists the values written as ``null``.
NULL_KEY = "null_values"


def _what(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def to_jsonable(obj: Any, nulls: Optional[dict] = None, why: Optional[Mapping[str, str]] = None,
                _path: str = "") -> Any:
    """``obj`` as plain JSON types, every non-finite float as ``None``.

    When ``nulls`` is a dict, each replaced value's path is added to it, mapped to ``why[key]`` (by the
    full path or by the last key) or to what the value was.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if nulls is not None:
            leaf = _path.rsplit("/", 1)[-1]
            reason = next((r for k, r in (why or {}).items() if _path == k or leaf == k or leaf.endswith("_" + k)),
                          None)
            nulls[_path or "."] = f"{_what(obj)}: {reason}" if reason else _what(obj)
        return None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, nulls, why, f"{_path}/{k}" if _path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v, nulls, why, f"{_path}/{i}" if _path else str(i)) for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        return to_jsonable(tolist(), nulls, why, _path)
    item = getattr(obj, "item", None)
    if callable(item):
        return to_jsonable(item(), nulls, why, _path)
    return str(obj)


def dumps_strict(obj: Any, *, explain_nulls: bool = False, why: Optional[Mapping[str, str]] = None,
                 **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (see the module docstring); ``kwargs`` go to
    ``json.dumps`` (``indent``, ``sort_keys``). ``explain_nulls`` adds the ``"null_values"`` key to a
    dict that had non-finite values."""
    nulls: dict[str, str] = {}
    clean = to_jsonable(obj, nulls, why)
    if explain_nulls and nulls and isinstance(clean, dict):
        clean = {**clean, NULL_KEY: {"why": "JSON has no NaN or Infinity; these values are written as null",
                                     **nulls}}
    kwargs.pop("allow_nan", None)
    kwargs.pop("default", None)
    return json.dumps(clean, allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: Any, *, indent: Optional[int] = 2, explain_nulls: bool = True,
               why: Optional[Mapping[str, str]] = None) -> str:
    """Write ``obj`` to ``path`` as strict JSON (non-finite floats as ``null``, explained under
    ``"null_values"`` when ``obj`` is a dict and ``explain_nulls``); returns the path."""
    Path(path).write_text(dumps_strict(obj, explain_nulls=explain_nulls, why=why, indent=indent) + "\n")
    return str(path)


def nulls_to_nan(obj: Any) -> Any:
    """The inverse for numeric readers: every ``None`` in ``obj`` (dicts and lists) becomes NaN."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: nulls_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nulls_to_nan(v) for v in obj]
    return obj
