"""Interruption: a training run killed mid-epoch resumes to the same final metrics and weights as an
uninterrupted one; ``prepare`` killed midway resumes without redoing or corrupting finished items;
every output file is written atomically (a crash mid-write leaves the previous file, never half a file).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _reliability_helpers import dicom_series, write_blobs

SRC = Path(__file__).resolve().parents[1] / "src" / "dualattn"


class SimulatedCrash(BaseException):
    """Not an Exception: nothing in the package may swallow it (like a kill)."""


# --------------------------------------------------------------------------- every writer is atomic

_WRITERS = {
    ("np", "save"), ("np", "savez"), ("np", "savez_compressed"), ("numpy", "save"), ("json", "dump"),
    ("", "save_file"), ("torch", "save"), ("nib", "save"), ("nibabel", "save"), ("nrrd", "write"),
    ("", "write_text"), ("", "write_bytes"), ("", "save_as"), ("", "to_csv"), ("", "savefig"),
    ("", "save_checkpoint"), ("", "save"), ("shutil", "copy"), ("shutil", "copyfile"), ("shutil", "copy2"),
    ("shutil", "move"), ("gzip", "open"),
}  # fmt: skip
_SAFE_MARKERS = {"atomic_path", "replace", "BytesIO"}  # os.replace(tmp, target) / a temp file / an in-memory buffer


def _writes(func: ast.AST):
    for node in ast.walk(func):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute):
            owner = getattr(f.value, "id", "") if isinstance(f.value, ast.Name) else ""
            name = f.attr
        elif isinstance(f, ast.Name):
            owner, name = "", f.id
        else:
            continue
        if name == "open" or (isinstance(f, ast.Attribute) and name == "open"):
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(f, ast.Attribute) and not isinstance(f.value, ast.Name):  # Path(...).open(mode)
                mode = node.args[0] if node.args else mode
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax"):
                yield node, f"open(..., {mode.value!r})"
        elif (owner, name) in _WRITERS or ("", name) in _WRITERS and owner not in ("np", "json", "torch", "nib", "shutil", "gzip"):
            yield node, f"{owner + '.' if owner else ''}{name}"


def _names_in(func: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
    return out


def _atomic_problems(root: Path) -> tuple[list[str], int]:
    """(non-atomic writes, number of write calls seen) over every module below ``root``."""
    problems, checked = [], 0
    for file in sorted(root.rglob("*.py")):
        if file.name == "_io.py":
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for scope in [*funcs, *top]:
            inner = {id(n) for f in funcs if f is not scope for n in ast.walk(f)} if scope in funcs else set()
            for node, what in _writes(scope):
                if id(node) in inner and scope in funcs:
                    continue  # reported in its own (nested) function
                checked += 1
                if not (_names_in(scope) & _SAFE_MARKERS):
                    problems.append(f"{file.relative_to(root)}:{node.lineno} {what} is not atomic")
    return problems, checked


def test_every_writer_in_the_package_is_atomic():
    """Static check over every module: a call that writes a file must sit in a function that writes
    to a temporary path and ``os.replace``s it (or uses ``dualattn._io.atomic_path``), or write to
    an in-memory buffer. ``dualattn._io`` itself is the one place allowed to write directly."""
    problems, checked = _atomic_problems(SRC)
    assert not problems, "\n".join(problems)
    assert checked >= 8, checked  # the scan does see the package's writers


def test_the_atomic_check_flags_direct_writes(tmp_path):
    """The static check itself: direct writes are flagged, the temp-file + os.replace idiom is not."""
    (tmp_path / "bad.py").write_text(
        "import json, numpy as np\n"
        "def a(p, obj):\n    with open(p, 'w') as fh:\n        json.dump(obj, fh)\n"
        "def b(p, x):\n    np.save(p, x)\n"
        "def c(p):\n    p.write_text('x')\n"
        "def d(p, m):\n    save_file(m, p)\n"
        "def e(p, x):\n    tmp = p.with_suffix('.tmp')\n    np.save(tmp, x)\n    os.replace(tmp, p)\n"
        "def f(p, fig):\n    buf = io.BytesIO()\n    fig.savefig(buf)\n"
    )
    problems, checked = _atomic_problems(tmp_path)
    assert checked == 7
    assert sorted(int(x.split(":")[1].split()[0]) for x in problems) == [3, 4, 6, 8, 10], problems


def test_a_crash_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    """Writers interrupted half-way (the bytes of the new file partly written): the old file is
    still there, intact, and no temporary file is left visible under the target's name."""
    import safetensors.torch

    from dualattn._io import atomic_write_json
    from dualattn.models import create_model
    from dualattn.weights import load_model, save_model

    target = tmp_path / "results.json"
    atomic_write_json(target, {"v": 1})
    import dualattn._io as io_mod

    real = io_mod.Path.write_bytes

    def half_then_crash(self, data):
        real(self, data[: len(data) // 2])
        raise SimulatedCrash

    monkeypatch.setattr(io_mod.Path, "write_bytes", half_then_crash)
    with pytest.raises(SimulatedCrash):
        atomic_write_json(target, {"v": 2, "pad": "x" * 1000})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # the temp file was removed

    model = create_model("unet_encoder", variant="exact", features=4)
    weights = save_model(model, tmp_path / "m.safetensors")
    before = weights.read_bytes()
    real_save = safetensors.torch.save_file

    def partial_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:
            fh.truncate(os.path.getsize(filename) // 3)
        raise SimulatedCrash

    monkeypatch.setattr(safetensors.torch, "save_file", partial_save)
    with pytest.raises(SimulatedCrash):
        save_model(create_model("unet_encoder", variant="exact", features=4), weights)
    monkeypatch.undo()
    assert weights.read_bytes() == before
    load_model(weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "results.json"]


# --------------------------------------------------------------------------- training: crash mid-epoch, resume


def _cfg(data: Path, *extra: str):
    from dualattn.train import load_config

    return load_config(
        overrides=[f"dataset={data}", "accelerator=cpu", "devices=1", "batch_size=4", "model_kwargs.features=4",
                   "max_epochs=3", "variant=dual", "plateau_patience=0", *extra]
    )  # fmt: skip


def _compare_runs(a: Path, b: Path) -> None:
    from dualattn.train import load_run
    from dualattn.train.callbacks import METRIC_COLUMNS, read_metrics, state_digest

    ra, rb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):
        for key in METRIC_COLUMNS:
            if key != "epoch_time_s":
                assert x[key] == y[key], (x["epoch"], key, x[key], y[key])
    for which in ("best", "last"):
        assert state_digest(load_run(a, which)) == state_digest(load_run(b, which)), which
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    for key in ("val_balanced_accuracy", "test_balanced_accuracy", "best_epoch", "epochs"):
        assert sa[key] == sb[key], key


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_blobs(tmp_path_factory.mktemp("tiny"), n=24, size=16)


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory) -> Path:
    from dualattn.train import fit

    return fit(_cfg(tiny_data), out=tmp_path_factory.mktemp("straight") / "run")


def test_crash_mid_epoch_then_resume_equals_uninterrupted(tiny_data, straight_run, tmp_path, monkeypatch):
    from dualattn.train import fit
    from dualattn.train.module import ClassifierModule

    real_step = ClassifierModule.training_step
    seen = []

    def crashing_step(self, batch, batch_idx):
        if self.epoch_index() == 1 and batch_idx == 2:  # epoch 2, mid-way: epoch 1's checkpoint exists
            seen.append(self.global_step)
            raise SimulatedCrash
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", crashing_step)
    out = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        fit(_cfg(tiny_data), out=out)
    monkeypatch.undo()
    assert seen and (out / "checkpoints" / "last.ckpt").is_file()
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 2  # header + epoch 1
    assert not (out / "summary.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    fit(_cfg(tiny_data), out=out, resume=True)
    _compare_runs(straight_run, out)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_epoch_then_resume_cli(tiny_data, tmp_path):
    """The real thing: ``dualattn train`` in a subprocess, SIGKILLed once the first checkpoint appears,
    then ``dualattn train --resume``. (The in-process test above covers the same path quickly.)"""
    out = tmp_path / "run"
    sets = ["--set", f"dataset={tiny_data}", "--set", "accelerator=cpu", "--set", "devices=1",
            "--set", "batch_size=4", "--set", "model_kwargs.features=4", "--set", "max_epochs=3",
            "--set", "variant=dual", "--set", "plateau_patience=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dualattn", "train", "--out", str(out), "--no-progress", *sets]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert ckpt.exists() and not (out / "summary.json").exists()
    res = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # the reference ran in the same environment (thread count changes float sums)
    straight = tmp_path / "straight"
    cmd[cmd.index(str(out))] = str(straight)
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    _compare_runs(straight, out)


# --------------------------------------------------------------------------- prepare: crash midway, resume


def test_prepare_pet_crash_then_resume_keeps_finished_items(tmp_path, monkeypatch):
    pet = pytest.importorskip("dualattn.data.pet")
    from dualattn.data import FolderDataset

    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    rows = ["series,label"]
    for i in range(3):
        dicom_series(raw / f"s{i}", (rng.random((5, 8, 8)) * 3000).astype(np.uint16), pet=True)
        rows.append(f"s{i},{['normal', 'mild', 'severe'][i]}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    real = pet.prepare_series
    calls = []

    def crash_on_second(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise SimulatedCrash
        return real(*a, **k)

    monkeypatch.setattr(pet, "prepare_series", crash_on_second)
    with pytest.raises(SimulatedCrash):
        pet.prepare_pet(raw, labels, out, size=16)
    monkeypatch.undo()
    first = sorted((out / "images").glob("*.npy"))
    assert len(first) == 1
    first_bytes, first_mtime = first[0].read_bytes(), first[0].stat().st_mtime_ns
    redo = []
    monkeypatch.setattr(pet, "prepare_series", lambda *a, **k: redo.append(a[0]) or real(*a, **k))
    report = pet.prepare_pet(raw, labels, out, size=16)
    assert report["resumed"] == 1 and report["new"] == 2 and report["items"] == 3, report
    assert len(redo) == 2 and all("s0" not in str(p) for p in redo)  # the finished series was not redone
    assert first[0].read_bytes() == first_bytes and first[0].stat().st_mtime_ns == first_mtime
    ds = FolderDataset(out)
    assert len(ds) == 3 and sorted(ds.labels) == [0, 1, 2]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_prepare_brats_crash_then_resume_keeps_finished_cases(tmp_path, monkeypatch):
    brats = pytest.importorskip("dualattn.data.brats")
    import nibabel as nib

    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for i in range(3):
        case = raw / f"BraTS_{i:03d}"
        case.mkdir(parents=True)
        seg = np.zeros((16, 16, 4), np.int16)
        seg[2:7, 3:9, :] = 1
        for mod in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(rng.random((16, 16, 4)).astype(np.float32), np.eye(4)), str(case / f"{case.name}_{mod}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(case / f"{case.name}_seg.nii.gz"))
    out = tmp_path / "out"
    real = brats._process_case
    calls = []

    def crash_on_second(case, *a, **k):
        calls.append(case)
        if len(calls) == 2:
            raise SimulatedCrash
        return real(case, *a, **k)

    monkeypatch.setattr(brats, "_process_case", crash_on_second)
    with pytest.raises(SimulatedCrash):
        brats.prepare_brats(raw, out, min_area=4, size=None, workers=1)
    monkeypatch.undo()
    done_files = {p: p.stat().st_mtime_ns for p in (out / "images").glob("*.npy")}
    assert done_files
    redo = []
    monkeypatch.setattr(brats, "_process_case", lambda case, *a, **k: redo.append(case) or real(case, *a, **k))
    report = brats.prepare_brats(raw, out, min_area=4, size=None, workers=1)
    assert report["cases_skipped_resume"] == 1 and report["cases_done"] == 2, report
    assert calls[0] not in redo
    assert all(p.stat().st_mtime_ns == m for p, m in done_files.items())  # finished items untouched
    from dualattn.data import FolderDataset

    assert len(FolderDataset(out)) == report["items"] > 0


# --------------------------------------------------------------------------- evaluate: a crash keeps results.json whole


def test_evaluate_crash_keeps_the_previous_results(tmp_path, monkeypatch):
    """``evaluate_runs`` writes results.json once, atomically: an evaluation killed midway leaves the
    previous complete results (never a truncated JSON) and no temporary file."""
    from _reliability_helpers import make_run

    from dualattn.evaluate import EvalSettings, evaluate_runs
    import dualattn.evaluate.runner as runner

    run = make_run(tmp_path, size=16, variant="baseline")
    data = write_blobs(tmp_path / "data", n=12, size=16)
    settings = EvalSettings(data=str(data), methods=["random"], blocks=["block3"], split="all", sanity_images=0,
                            perturbation_steps=2)
    path = evaluate_runs([run], out=tmp_path / "eval", settings=settings)
    before = path.read_bytes()
    json.loads(before)
    real = runner.time.perf_counter
    calls = []

    def crash_later():
        calls.append(1)
        if len(calls) == 6:
            raise SimulatedCrash
        return real()

    monkeypatch.setattr(runner.time, "perf_counter", crash_later)
    with pytest.raises(SimulatedCrash):
        evaluate_runs([run], out=tmp_path / "eval", settings=settings.replace(resume=False))  # recompute (a resumed run would reuse every unit)
    monkeypatch.undo()
    assert path.read_bytes() == before
    # no temporary file anywhere: only the finished units' records (kept on purpose for resuming)
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".") and p.name != ".partial"]
    for record in (tmp_path / "eval" / ".partial").iterdir():
        assert record.suffix == ".json" and not record.name.startswith(".")
        json.loads(record.read_text())
