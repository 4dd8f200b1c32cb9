"""Untrusted weights: no loading path of dualattn ever unpickles; corrupt safetensors get a clear error.

A hostile file's payload creates a marker file when unpickled. Each test first proves the payload is
live (plain ``pickle.loads`` does create the marker), then feeds the file to a dualattn loading path
and checks that the load is refused with an error naming the file and that the marker never appears.
"""

from __future__ import annotations

import ast
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from _reliability_helpers import evil_pickle_bytes, make_run, write_blobs, write_evil_torch_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "dualattn"


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    # positive control: the payload really runs code when unpickled
    pickle.loads(evil_pickle_bytes(m))
    assert m.exists()
    m.unlink()
    return m


def _hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / "plain-pickle.safetensors"
    plain.write_bytes(evil_pickle_bytes(marker))
    zipped = write_evil_torch_checkpoint(folder / "torch-zip.safetensors", marker)
    return {"plain": plain, "torch_zip": zipped}


def test_load_model_refuses_pickles(tmp_path, marker):
    from dualattn.weights import WeightsError, load_model, read_metadata

    for kind, path in _hostile_files(tmp_path / "w", marker).items():
        for loader in (load_model, read_metadata):
            with pytest.raises(WeightsError) as info:
                loader(path)
            assert str(path) in str(info.value), (kind, loader.__name__)
            assert "safetensors" in str(info.value)
    assert not marker.exists()


def test_load_run_and_scan_refuse_a_hostile_run(tmp_path, marker):
    from typer.testing import CliRunner

    import numpy as np

    from dualattn.cli import app
    from dualattn.pipelines.scan import explain_scan
    from dualattn.train import load_run
    from dualattn.weights import WeightsError

    run = make_run(tmp_path, size=16, name="run-[/bold]-exact")  # rich markup in a path must not crash the CLI
    for which in ("best", "last"):
        (run / f"{which}.safetensors").write_bytes(evil_pickle_bytes(marker))
    scan = tmp_path / "scan.npy"
    np.save(scan, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    for which in ("best", "last"):
        with pytest.raises(WeightsError, match=f"{which}.safetensors"):
            load_run(run, which)
    with pytest.raises(ValueError, match="best.safetensors"):
        explain_scan(scan, run=run, method="attention")
    res = CliRunner().invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "best.safetensors" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert not marker.exists()
    # a run folder without weights: an error message, not a traceback
    (tmp_path / "empty-run").mkdir()
    res = CliRunner().invoke(app, ["explain", str(scan), "--run", str(tmp_path / "empty-run"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "best.safetensors does not exist" in res.output, (res.output, res.exception)


def test_evaluate_refuses_a_hostile_run(tmp_path, marker):
    from dualattn.evaluate import EvalSettings, evaluate_runs

    run = make_run(tmp_path, size=16, variant="baseline")
    (run / "best.safetensors").write_bytes(evil_pickle_bytes(marker))
    data = write_blobs(tmp_path / "data", n=8, size=16)
    with pytest.raises(ValueError, match="best.safetensors"):
        evaluate_runs([run], out=tmp_path / "eval", settings=EvalSettings(data=str(data), methods=["random"], blocks=["block3"]))
    assert not marker.exists()


def test_resume_refuses_a_hostile_checkpoint(tmp_path, marker):
    """``fit(resume=True)`` reads ``checkpoints/last.ckpt`` with ``weights_only``: a code-carrying
    checkpoint (a real torch zip, as an attacker would ship it) is refused and runs nothing."""
    from dualattn.train import fit, load_config

    data = write_blobs(tmp_path / "data", n=16, size=16)
    cfg = load_config(
        overrides=[f"dataset={data}", "accelerator=cpu", "devices=1", "batch_size=8",
                   "model_kwargs.features=4", "max_epochs=1", "augment=false"]
    )  # fmt: skip
    run = fit(cfg, out=tmp_path / "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()
    hostile = {
        "torch zip with code": lambda: write_evil_torch_checkpoint(ckpt, marker),
        "plain pickle with code": lambda: ckpt.write_bytes(evil_pickle_bytes(marker)),
        "truncated checkpoint": lambda: ckpt.write_bytes(good[: len(good) // 2]),
    }
    for name, make in hostile.items():
        make()
        with pytest.raises(ValueError, match="refusing to resume") as info:
            fit(cfg.replace(max_epochs=2), out=run, resume=True)
        assert str(ckpt) in str(info.value), name
        assert "weights_only=False" not in str(info.value)  # no advice to run the file's code
        assert not marker.exists(), name
    # the CLI reports it as an error (exit 2), not a traceback
    from typer.testing import CliRunner

    from dualattn.cli import app

    write_evil_torch_checkpoint(ckpt, marker)
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--no-progress", "--set", "max_epochs=2"])
    assert res.exit_code == 2 and "refusing to resume" in res.output, res.output
    assert not marker.exists()
    # the genuine checkpoint still resumes
    ckpt.write_bytes(good)
    fit(cfg.replace(max_epochs=2), out=run, resume=True)


# --------------------------------------------------------------------------- corrupt safetensors


def _valid_weights(tmp_path: Path) -> Path:
    from dualattn.models import create_model
    from dualattn.weights import save_model

    torch.manual_seed(0)
    return save_model(create_model("unet_encoder", variant="exact", features=4), tmp_path / "ok.safetensors")


def _corruptions(good: bytes) -> dict[str, bytes]:
    (hlen,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + hlen])
    body = good[8 + hlen :]

    def with_header(h: dict) -> bytes:
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + body

    first = next(k for k in header if k != "__metadata__")
    overlapping = json.loads(json.dumps(header))
    overlapping[first]["data_offsets"] = [0, len(body) * 4]
    bad_dtype = json.loads(json.dumps(header))
    bad_dtype[first]["dtype"] = "Q128"
    bad_shape = json.loads(json.dumps(header))
    bad_shape[first]["shape"] = [2**40, 2**40]
    no_config = {k: v for k, v in header.items() if k != "__metadata__"}
    bad_config = json.loads(json.dumps(header))
    bad_config["__metadata__"]["dualattn_config"] = "{not json"
    unknown_model = json.loads(json.dumps(header))
    unknown_model["__metadata__"]["dualattn_config"] = json.dumps({"name": "no_such_model"})
    return {
        "empty": b"",
        "seven bytes": good[:7],
        "header length beyond the file": struct.pack("<Q", len(good) * 10) + good[8:],
        "huge header length": struct.pack("<Q", 2**63) + good[8:],
        "header cut": good[: 8 + hlen // 2],
        "garbage header": struct.pack("<Q", hlen) + b"\xff" * hlen + body,
        "truncated body": good[: len(good) - max(1, len(body) // 3)],
        "one byte missing": good[:-1],
        "offsets beyond the body": with_header(overlapping),
        "unknown dtype": with_header(bad_dtype),
        "absurd shape": with_header(bad_shape),
        "no dualattn config": with_header(no_config),
        "corrupt config json": with_header(bad_config),
        "unknown model name": with_header(unknown_model),
    }


def test_corrupt_safetensors_get_a_clear_error_naming_the_file(tmp_path):
    from dualattn.weights import WeightsError, load_model

    good_path = _valid_weights(tmp_path)
    load_model(good_path)  # the uncorrupted file loads
    cases = _corruptions(good_path.read_bytes())
    for name, data in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(data)
        with pytest.raises(WeightsError) as info:
            load_model(path)
        assert str(path) in str(info.value), (name, str(info.value))
    assert len(cases) == 14


def test_weights_of_another_architecture_are_refused(tmp_path):
    from dualattn.models import create_model
    from dualattn.weights import WeightsError, load_model
    from safetensors.torch import load_file, save_file

    good = _valid_weights(tmp_path)
    other = create_model("unet_encoder", variant="exact", features=8).state_dict()
    path = tmp_path / "swapped.safetensors"
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
    save_file({k: v.contiguous() for k, v in other.items()}, str(path), metadata=meta)
    with pytest.raises(WeightsError, match="swapped.safetensors"):
        load_model(path)
    assert set(load_file(str(good))) == set(other)  # same names, other shapes: only the shapes differ


# --------------------------------------------------------------------------- no unsafe loader in the package


_UNSAFE = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
    ("joblib", "load"), ("cloudpickle", "load"), ("cloudpickle", "loads"), ("marshal", "loads"),
    ("shelve", "open"), ("pd", "read_pickle"), ("pandas", "read_pickle"), ("jit", "load"),
}  # fmt: skip


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", "")
                yield node, owner, func.attr
            elif isinstance(func, ast.Name):
                yield node, "", func.id


def _kw(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_package_has_no_unsafe_deserializer():
    """Static guard over every module: no pickle-family loader; ``torch.load`` always with
    ``weights_only=True``; ``np.load`` never with ``allow_pickle=True``; YAML only ``safe_load``;
    Lightning ``fit``/``test``/``validate`` given a ``ckpt_path`` always with ``weights_only=True``."""
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    problems = _unsafe_loads(SRC)
    assert not problems, "\n".join(problems)


def test_the_unsafe_deserializer_check_flags_planted_loads(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import pickle, torch, numpy as np, yaml\n"
        "a = pickle.load(open('x', 'rb'))\n"
        "b = torch.load('x')\n"
        "c = torch.load('x', weights_only=False)\n"
        "d = np.load('x', allow_pickle=True)\n"
        "e = yaml.load(open('x'))\n"
        "trainer.fit(m, ckpt_path='x')\n"
        "ok1 = torch.load('x', weights_only=True)\n"
        "ok2 = np.load('x', allow_pickle=False)\n"
        "ok3 = yaml.safe_load('x')\n"
        "trainer.fit(m, ckpt_path='x', weights_only=True)\n"
    )
    lines = sorted(int(p.split(":")[1].split()[0]) for p in _unsafe_loads(tmp_path))
    assert lines == [2, 3, 4, 5, 6, 7], lines


def _unsafe_loads(root: Path) -> list[str]:
    problems: list[str] = []
    for file in sorted(root.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        where = lambda n: f"{file.relative_to(root)}:{n.lineno}"  # noqa: E731
        for node, owner, attr in _calls(tree):
            if (owner, attr) in _UNSAFE:
                problems.append(f"{where(node)} {owner}.{attr}")
            if owner == "torch" and attr == "load":
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where(node)} torch.load without weights_only=True")
            if owner in ("np", "numpy") and attr == "load":
                ap = _kw(node, "allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True or (ap is not None and not isinstance(ap, ast.Constant)):
                    problems.append(f"{where(node)} np.load with allow_pickle")
            if owner == "yaml" and attr in ("load", "load_all", "unsafe_load", "full_load"):
                problems.append(f"{where(node)} yaml.{attr} (use safe_load)")
            if attr in ("fit", "validate", "test", "predict") and _kw(node, "ckpt_path") is not None:
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where(node)} {attr}(ckpt_path=...) without weights_only=True")
            if attr == "load_from_checkpoint":
                problems.append(f"{where(node)} load_from_checkpoint unpickles")
    return problems


def test_a_config_asking_for_a_giant_model_is_refused_before_allocating(tmp_path):
    """A few-KB file whose header config says ``features=300`` (a ~2 GB U-Net) while its tensors are
    tiny: refused from the header alone (meta-device build), without allocating the giant model."""
    import resource

    from dualattn.weights import WeightsError, load_model

    good = _valid_weights(tmp_path).read_bytes()
    (hlen,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + hlen])
    config = json.loads(header["__metadata__"]["dualattn_config"])
    config["features"] = 300
    header["__metadata__"]["dualattn_config"] = json.dumps(config)
    text = json.dumps(header).encode()
    path = tmp_path / "giant.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + hlen :])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match="giant.safetensors.*\\(4, 1, 3, 3\\) vs config \\(300, 1, 3, 3\\)"):
        load_model(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mib < 200, grown_mib
