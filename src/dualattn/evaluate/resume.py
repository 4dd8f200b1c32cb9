"""Resuming an evaluation: one JSON record per finished (method, run) unit under ``OUT/.partial/``.

A record is reused only when its fingerprint -- a SHA-256 over every setting that changes the unit's
numbers (data, split, blocks, perturbation, the source run's and the classifier's weights ...) --
matches; anything else is recomputed with a warning. Non-finite numbers are stored as the strings
``"nan"`` / ``"inf"`` / ``"-inf"`` (JSON has no NaN) and read back as floats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import atomic_write_json

__all__ = ["RESUME_FORMAT", "PARTIAL_DIR", "unit_fingerprint", "unit_filename", "save_unit", "load_unit"]

logger = logging.getLogger(__name__)

#: bump when a unit record's content or meaning changes: older records are then recomputed
RESUME_FORMAT = 3
#: folder under ``out`` holding one JSON record per finished (method, run) unit
PARTIAL_DIR = ".partial"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NUMERIC_KEYS = ("metrics", "per_image", "consistency", "scores")


def _encode_floats(obj: Any) -> Any:
    """NaN/±Inf as the strings ``"nan"``/``"inf"``/``"-inf"`` (the JSON writer would turn them into null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_floats(v) for v in obj]
    return obj


def _decode_floats(obj: Any) -> Any:
    if isinstance(obj, str):
        if obj not in _NONFINITE:
            raise ValueError(f"unexpected string {obj!r} where a number belongs")
        return _NONFINITE[obj]
    if isinstance(obj, bool) or obj is None:
        raise ValueError(f"unexpected {obj!r} where a number belongs")
    if isinstance(obj, (int, float)):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_floats(v) for v in obj]
    raise ValueError(f"unexpected {type(obj).__name__} in a unit record")


def unit_fingerprint(
    common: Mapping[str, Any], *, method: str, k: int | None, method_blocks: Sequence[str],
    source: Mapping[str, Any] | None, classifier: Mapping[str, Any] | None, k_own: int | None = None,
) -> str:
    """SHA-256 over every setting that changes a unit's numbers.

    Args:
        common: the settings shared by every unit (data, split, blocks, perturbation, hiding test ...).
        method, k, k_own, method_blocks: the unit: method name, run indices, blocks it is evaluated at.
        source, classifier: digests of the explained run's weights and, per role, of the classifier's
            (:meth:`dualattn.runs.RunDir.digest`).
    """
    payload = {
        "resume_format": RESUME_FORMAT, **common, "method": method, "k": k, "k_own": k_own,
        "method_blocks": list(method_blocks), "source": source, "classifier": classifier,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def unit_filename(method: str, method_blocks: Sequence[str], k: int, variant: str | None = None) -> str:
    """``<method>__[<variant>__]<block>+<block>__<k>.json`` (characters unsafe in file names replaced); ``k`` is
    the run's index among its variant's runs."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", method)
    middle = "" if variant is None else re.sub(r"[^A-Za-z0-9_.-]", "_", variant) + "__"
    return f"{safe}__{middle}{'+'.join(method_blocks) or 'none'}__{int(k)}.json"


def save_unit(path: Path, record: Mapping[str, Any]) -> None:
    """Write a unit record atomically (non-finite numbers encoded)."""
    rec = dict(record)
    for key in _NUMERIC_KEYS:
        rec[key] = _encode_floats(rec[key])
    atomic_write_json(path, rec)


def load_unit(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record at ``path`` if it parses and matches ``fingerprint``, else ``None`` (with a warning
    when a file is there but unusable)."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
        if rec.get("format") != RESUME_FORMAT or rec.get("fingerprint") != fingerprint:
            logger.warning("ignoring resume record %s: it was made with other settings, runs or data "
                           "(fingerprint differs); recomputing", path)
            return None
        metrics = _decode_floats(rec["metrics"])
        per_image = _decode_floats(rec["per_image"])
        scores = {}
        for role, sc in rec["scores"].items():
            predictions = sc["predictions"]
            if not isinstance(predictions, dict):
                raise ValueError("malformed predictions")
            scores[str(role)] = {"classifier": str(sc["classifier"]), "metrics": _decode_floats(sc["metrics"]),
                                 "curves": _decode_floats(sc["curves"]), "per_image": _decode_floats(sc["per_image"]),
                                 "predictions": predictions}
            if not all(isinstance(v, dict) for v in (scores[role]["metrics"], scores[role]["curves"])):
                raise ValueError("malformed scores")
        cons = rec["consistency"]
        if cons is not None:
            cons = {"pair": str(cons["pair"]), "value": _decode_floats(cons["value"])}
        errors = [str(e) for e in rec["errors"]]
        if not all(isinstance(v, dict) for v in (metrics, *metrics.values())):
            raise ValueError("malformed metrics")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("ignoring unreadable resume record %s (%s); recomputing", path, exc)
        return None
    return {**rec, "metrics": metrics, "per_image": per_image, "scores": scores, "consistency": cons,
            "errors": errors}
