"""The sealed test draw and per-call generator options of the embedded datasets."""

from __future__ import annotations

import csv

import pytest

from dualattn.data import make_dataset, resolve_dataset
from dualattn.data._registry import dataset_info
from dualattn.data.sealed import SEALED_DATA_SEED, is_sealed, refuse_sealed


def test_refuse_sealed_names_the_caller_and_passes_other_seeds():
    assert refuse_sealed(0) == 0 and refuse_sealed(SEALED_DATA_SEED + 1) == SEALED_DATA_SEED + 1
    with pytest.raises(ValueError, match="my study: data seed .* sealed"):
        refuse_sealed(SEALED_DATA_SEED, who="my study")
    assert is_sealed(SEALED_DATA_SEED) and not is_sealed(None) and not is_sealed(0)


def _patients(root):
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, {r["patient"] for r in rows}


def test_slices_per_patient_option_gives_more_patients_for_the_same_images(tmp_path):
    rows4, pats4 = _patients(make_dataset("synthetic-brain", tmp_path / "a", n=32, size=16, seed=5))
    rows1, pats1 = _patients(make_dataset("synthetic-brain", tmp_path / "b", n=32, size=16, seed=5,
                                          options={"slices_per_patient": 1}))
    assert len(rows4) == len(rows1) == 32
    assert len(pats4) == 4 and len(pats1) == 16  # two halves per slice, one slice per patient


def test_options_are_part_of_the_cache_key_and_contradictions_are_refused(tmp_path):
    a = resolve_dataset("synthetic-brain", cache_dir=tmp_path, n=16, size=16, seed=1)
    b = resolve_dataset("synthetic-brain", cache_dir=tmp_path, n=16, size=16, seed=1,
                        options={"slices_per_patient": 1})
    assert a != b and _patients(b)[1] != _patients(a)[1]
    assert resolve_dataset("synthetic-brain", cache_dir=tmp_path, n=16, size=16, seed=1,
                           options={"slices_per_patient": 1}) == b
    info = dataset_info("synthetic-brain-easy")
    with pytest.raises(ValueError, match="contradicts"):
        info.merged_options({"confounders": True})
    with pytest.raises(ValueError, match="unknown generator option"):
        make_dataset("synthetic-brain", tmp_path / "c", n=8, size=16, options={"no_such_option": 3})
