"""Patient-level, seeded, stratified splits that do not depend on file order."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Hashable, Sequence

__all__ = ["SPLIT_NAMES", "split_patients", "split_indices"]

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def _rank_key(seed: int, patient: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{patient}".encode("utf-8")).digest()


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if not 2 <= len(fr) <= 3:
        raise ValueError(f"fractions must have 2 or 3 entries (train, val[, test]); got {fractions!r}")
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1; got {fractions!r}")
    return fr


def split_patients(
    patients: Sequence[str],
    *,
    strata: Sequence[Hashable] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, str]:
    """Assign each distinct patient to ``train`` / ``val`` / ``test``.

    The order is a keyed hash of ``(seed, patient id)``, so the result depends only on the set of
    patient ids and the seed, never on the order they are listed in. Patients are stratified: within
    each stratum (e.g. the patient's label set) they are cut at the cumulative ``fractions``, so rare
    classes reach every split. If a split with a positive fraction ends up empty while another holds
    more than one patient, the last-ranked patient of the largest split is moved into it.

    Args:
        patients: patient id per item (repeats allowed; order irrelevant).
        strata: optional stratum per item (same length); a patient's stratum is the sorted tuple of
            its items' strata.
        fractions: ``(train, val, test)`` or ``(train, val)``; non-negative, summing to 1.
        seed: changes the assignment.

    Returns:
        ``{patient_id: split_name}``.

    Example:
        >>> split_patients(["a", "b", "c", "d"], fractions=(0.5, 0.25, 0.25), seed=0)  # doctest: +SKIP
        {'a': 'train', 'b': 'test', 'c': 'train', 'd': 'val'}
    """
    fr = _check_fractions(fractions)
    names = SPLIT_NAMES[: len(fr)]
    if strata is not None and len(strata) != len(patients):
        raise ValueError(f"strata has {len(strata)} entries but patients has {len(patients)}")
    per_patient: dict[str, set] = defaultdict(set)
    for i, p in enumerate(patients):
        per_patient[str(p)].add(None if strata is None else strata[i])
    groups: dict[tuple, list[str]] = defaultdict(list)
    for p, s in per_patient.items():
        groups[tuple(sorted(s, key=repr))].append(p)
    cum = [sum(fr[: k + 1]) for k in range(len(fr))]
    out: dict[str, str] = {}
    ranked_all: dict[str, bytes] = {}
    for key in sorted(groups, key=repr):
        members = sorted(groups[key], key=lambda p: _rank_key(seed, p))
        m = len(members)
        bounds = [round(c * m) for c in cum]
        bounds[-1] = m
        start = 0
        for name, stop in zip(names, bounds):
            for p in members[start:stop]:
                out[p] = name
                ranked_all[p] = _rank_key(seed, p)
            start = max(start, stop)
    counts = {n: sum(1 for v in out.values() if v == n) for n in names}
    for name, f in zip(names, fr):
        if f > 0 and counts[name] == 0:
            donor = max(names, key=lambda n: counts[n])
            if counts[donor] <= 1:
                continue
            victim = max((p for p, s in out.items() if s == donor), key=lambda p: ranked_all[p])
            out[victim] = name
            counts[donor] -= 1
            counts[name] += 1
    return out


def split_indices(
    patients: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[int]]:
    """Item indices per split, with every patient's items in one split (see :func:`split_patients`).

    Args:
        patients: patient id per item.
        labels: optional label per item, used to stratify.
        fractions: ``(train, val, test)`` or ``(train, val)``.
        seed: changes the assignment.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` ascending indices.
    """
    assign = split_patients(patients, strata=labels, fractions=fractions, seed=seed)
    fr = _check_fractions(fractions)
    out: dict[str, list[int]] = {n: [] for n in SPLIT_NAMES[: len(fr)]}
    for i, p in enumerate(patients):
        out[assign[str(p)]].append(i)
    return out
