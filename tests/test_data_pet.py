"""``prepare pet``: pseudonym keys, SUV units, LABELS.csv series paths.

* pseudonyms and resume fingerprints are HMACs keyed by a secret that never reaches the output
  folder (an attacker holding the output cannot test candidate patient IDs); where the per-user
  key lives, and that racing processes create one complete key;
* a missing ``Units`` tag (or CNTS without Philips' scale factor) is refused, never guessed;
* LABELS.csv series paths that are absolute or contain ``..`` are refused by row.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from _reliability_helpers import PATIENT, all_files, dicom_series


@pytest.fixture(autouse=True)
def _secret_dir(tmp_path, monkeypatch) -> Path:
    """The per-user key goes below tmp_path, never into the real home folder."""
    d = tmp_path / "secret-dir"
    monkeypatch.setenv("DUALATTN_SECRET_DIR", str(d))
    return d


def _series(folder: Path, *, seed: int = 0, tags: dict[str, str] | None = None) -> Path:
    vol = (np.random.default_rng(seed).random((5, 8, 8)) * 3000).astype(np.uint16)
    vol[2, 3:5, 3:5] += 20000
    return dicom_series(folder, vol, tags=tags, pet=True)


def _edit(folder: Path, fn) -> None:  # noqa: ANN001
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(str(f))
        fn(ds)
        ds.save_as(str(f))


def _strings_in(root: Path) -> set[str]:
    """Every string value of every JSON file and every CSV cell below root (the attacker's candidates)."""
    out: set[str] = {""}
    for f in all_files(root):
        text = f.read_bytes().decode("utf-8", "ignore")
        if f.suffix == ".csv":
            for row in csv.reader(text.splitlines()):
                out.update(row)
            continue
        try:
            stack = [json.loads(text)]
        except ValueError:
            continue
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
                out.update(map(str, v.keys()))
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str):
                out.add(v)
    return out


def _pseudonym(key: bytes, patient: str) -> str:
    return "pt-" + hmac.new(key, ("patient:" + patient).encode(), hashlib.sha256).hexdigest()[:12]


# ----------------------------------------------------------------------------- pseudonyms and keys


def test_pseudonyms_use_a_per_user_key_outside_the_output(tmp_path, _secret_dir):
    from dualattn.data.pet import default_key_file, prepare_pet

    raw, out = tmp_path / "raw", tmp_path / "out"
    _series(raw / "s0")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"series,label,patient\ns0,mild,{PATIENT['PatientID']}\n")
    prepare_pet(raw, labels, out, size=16)

    key_file = default_key_file()
    assert key_file == _secret_dir / "prepare-pet.key" and key_file.is_file()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    key = key_file.read_bytes().strip()
    assert len(key) == 64
    pseudonym = next(csv.DictReader((out / "labels.csv").open()))["patient"]
    # positive control: with the key, the pseudonym is the documented HMAC (so the attack below is the right one)
    assert pseudonym == _pseudonym(key, PATIENT["PatientID"])
    # the key (and nothing derived from a patient ID but the pseudonym) is absent from the output
    assert all(key not in f.read_bytes() for f in all_files(out))
    state = json.loads((out / ".prepare_pet_state.json").read_text())
    assert set(state) == {"version", "key_check", "done"} and "salt" not in json.dumps(state)
    series_fp = hmac.new(key, b"series:s0", hashlib.sha256).hexdigest()[:24]
    assert list(state["done"]) == [series_fp]
    # the attacker: every string in the output as a candidate key, both constructions, 10^4 IDs
    found = []
    for secret in _strings_in(out):
        for i in range(10_000):
            cand = f"PID-8817-{i:04d}"
            plain = "pt-" + hashlib.sha256((secret + "\x00patient:" + cand).encode()).hexdigest()[:12]
            if pseudonym in (plain, _pseudonym(secret.encode(), cand)):
                found.append(cand)
    assert not found
    # the same attack with the real key finds the ID: the search above would have worked
    assert any(_pseudonym(key, f"PID-8817-{i:04d}") == pseudonym for i in range(4400, 4410))


def test_resume_needs_the_same_key_and_keys_are_checked(tmp_path):
    from dualattn.data.pet import prepare_pet

    raw = tmp_path / "raw"
    for i in range(2):
        _series(raw / f"s{i}", seed=i)
    labels = tmp_path / "labels.csv"
    labels.write_text("series,label,patient\ns0,mild,P1\ns1,normal,P2\n")
    out = tmp_path / "out"
    secret = "correct horse battery staple"
    first = prepare_pet(raw, labels, out, size=16, salt=secret)
    assert first["new"] == 2
    names = sorted(p.name for p in (out / "images").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = prepare_pet(raw, labels, out, size=16, salt=secret)
    assert again["new"] == 0 and again["resumed"] == 2 and again["items"] == 2
    key_file = tmp_path / "keys" / "k.txt"
    key_file.parent.mkdir()
    key_file.write_text(secret + "\n")
    via_file = prepare_pet(raw, labels, out, size=16, key_file=key_file)  # same key from a file: resumes
    assert via_file["resumed"] == 2 and via_file["new"] == 0
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert {r["patient"] for r in rows} == {_pseudonym(secret.encode(), "P1"), _pseudonym(secret.encode(), "P2")}
    with pytest.raises(ValueError, match="another pseudonym key"):
        prepare_pet(raw, labels, out, size=16, salt="a different secret")
    with pytest.raises(ValueError, match="another pseudonym key"):
        prepare_pet(raw, labels, out, size=16)  # the per-user key is not the one used
    with pytest.raises(ValueError, match="at least 8"):
        prepare_pet(raw, labels, tmp_path / "o2", size=16, salt="short")
    with pytest.raises(ValueError, match="not both"):
        prepare_pet(raw, labels, tmp_path / "o2", size=16, salt=secret, key_file=key_file)
    inside = out / "my.key"
    inside.write_text(secret)
    with pytest.raises(ValueError, match="inside the output folder"):
        prepare_pet(raw, labels, out, size=16, key_file=inside)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_pet(raw, labels, tmp_path / "o3", size=16, key_file=tmp_path / "missing.key")
    # never written: neither the secret nor the key file's content appears in any output file
    assert all(secret.encode() not in f.read_bytes() for f in all_files(out) if f != inside)


def test_old_state_with_a_stored_salt_is_refused(tmp_path):
    from dualattn.data.pet import prepare_pet

    raw, out = tmp_path / "raw", tmp_path / "out"
    _series(raw / "s0")
    labels = tmp_path / "labels.csv"
    labels.write_text("series,label\ns0,mild\n")
    out.mkdir()
    (out / ".prepare_pet_state.json").write_text(json.dumps({"salt": "ab" * 16, "done": {}}))
    with pytest.raises(ValueError, match="older dualattn"):
        prepare_pet(raw, labels, out, size=16)


def test_cli_key_file_and_help_text(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    raw = tmp_path / "raw"
    _series(raw / "s0")
    labels = tmp_path / "labels.csv"
    labels.write_text("series,label,patient\ns0,severe,PID-1\n")
    key = tmp_path / "pet.key"
    key.write_text("0123456789abcdef-secret\n")
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "pet", str(raw), str(labels), str(tmp_path / "out"), "--size", "8",
                              "--key-file", str(key)])
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader((tmp_path / "out" / "labels.csv").open()))
    assert row["patient"] == _pseudonym(b"0123456789abcdef-secret", "PID-1")
    assert all(b"0123456789abcdef" not in f.read_bytes() for f in all_files(tmp_path / "out"))
    bad = runner.invoke(app, ["prepare", "pet", str(raw), str(labels), str(tmp_path / "o2"), "--salt", "abc"])
    assert bad.exit_code == 2 and "at least 8" in bad.output
    help_text = " ".join(runner.invoke(app, ["prepare", "pet", "--help"]).output.split())
    assert "never written" in help_text and "--key-file" in help_text


# ----------------------------------------------------------------------------- units


def _suv_ds(**tags) -> pydicom.Dataset:  # noqa: ANN003
    ds = pydicom.Dataset()
    ds.PatientWeight = 70
    info = pydicom.Dataset()
    info.RadionuclideTotalDose, info.RadionuclideHalfLife, info.RadiopharmaceuticalStartTime = 370e6, 6586.2, "100000"
    ds.RadiopharmaceuticalInformationSequence = [info]
    ds.SeriesTime = "110000"
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def _philips_scale(ds: pydicom.Dataset, value: float, *, element: int = 0x10) -> None:
    """The Philips private block at (7053,00xx) with the Activity Concentration Scale Factor (7053,xx09)."""
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x09, "DS", f"{value:.6g}")


def test_suv_factor_refuses_unknown_units_by_hand():
    from dualattn.data.pet import counts_scale_factor, suv_bw_factor

    bqml = 70000 / (370e6 * 0.5 ** (3600 / 6586.2))
    assert suv_bw_factor(_suv_ds(Units="BQML")) == pytest.approx(bqml, rel=1e-12)
    with pytest.raises(ValueError, match="Units tag .* missing"):
        suv_bw_factor(_suv_ds())  # used to be taken as BQML
    with pytest.raises(ValueError, match="Activity Concentration Scale Factor"):
        suv_bw_factor(_suv_ds(Units="CNTS"))
    with pytest.raises(ValueError, match="'GML' not supported"):
        suv_bw_factor(_suv_ds(Units="GML"))
    ds = _suv_ds(Units="CNTS")
    _philips_scale(ds, 0.25)
    assert counts_scale_factor(ds) == 0.25
    assert suv_bw_factor(ds) == pytest.approx(0.25 * bqml, rel=1e-12)
    ds2 = _suv_ds(Units="CNTS")
    _philips_scale(ds2, -1.0)
    with pytest.raises(ValueError, match="positive"):
        suv_bw_factor(ds2)
    # a block reserved by another creator at 0x10 pushes Philips to 0x11: found all the same
    ds3 = _suv_ds(Units="CNTS")
    ds3.private_block(0x7053, "SOMEONE ELSE", create=True).add_new(0x09, "DS", "99")
    _philips_scale(ds3, 3.0)
    assert (0x7053, 0x1109) in ds3 and suv_bw_factor(ds3) == pytest.approx(3.0 * bqml, rel=1e-12)


def test_prepare_pet_refuses_missing_units_and_converts_philips_counts(tmp_path):
    from dualattn.data.pet import prepare_pet

    raw = tmp_path / "raw"
    for name in ("bqml", "nounits", "cnts_bare", "cnts_philips", "cnts_mixed"):
        _series(raw / name)
    _edit(raw / "nounits", lambda ds: delattr(ds, "Units"))
    _edit(raw / "cnts_bare", lambda ds: setattr(ds, "Units", "CNTS"))

    def philips(ds):  # noqa: ANN001, ANN202
        ds.Units = "CNTS"
        _philips_scale(ds, 0.5)

    _edit(raw / "cnts_philips", philips)
    k = iter(range(100))
    _edit(raw / "cnts_mixed", lambda ds: (philips(ds), _philips_scale(ds, 0.5 + next(k))))
    labels = tmp_path / "labels.csv"
    labels.write_text("series,label\nbqml,mild\nnounits,mild\ncnts_bare,mild\ncnts_philips,mild\ncnts_mixed,mild\n")
    report = prepare_pet(raw, labels, tmp_path / "out", size=16)
    problems = {b["row"]: b["problem"] for b in report["bad_series"]}
    assert set(problems) == {3, 4, 6}, report
    assert "Units tag (0054,1001) missing" in problems[3]
    assert "CNTS" in problems[4] and "Scale Factor" in problems[4]
    assert "differs between slices" in problems[6]
    assert report["items"] == 2
    # counts x 0.5 -> the same equalized image as the Bq/ml series (equalization is scale-free)
    a, b = (np.load(tmp_path / "out" / "images" / f"pet0000{i}.npy") for i in (0, 1))
    np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- series paths


def test_series_paths_escaping_raw_are_refused_by_row(tmp_path):
    from dualattn.data.pet import prepare_pet

    raw = tmp_path / "raw"
    _series(raw / "inside")
    outside = _series(tmp_path / "elsewhere" / "victim", seed=3)  # a readable series outside RAW
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "series,label\n"
        "inside,mild\n"
        f"{outside},mild\n"                   # absolute
        "../elsewhere/victim,mild\n"          # parent escape
        "inside/../../elsewhere/victim,normal\n"
        "C:\\data\\victim,normal\n"           # a Windows absolute path
    )
    report = prepare_pet(raw, labels, tmp_path / "out", size=16)
    problems = {b["row"]: b["problem"] for b in report["bad_series"]}
    assert report["items"] == 1 and set(problems) == {3, 4, 5, 6}, report
    assert "absolute" in problems[3] and "absolute" in problems[6]
    assert "'..'" in problems[4] and "'..'" in problems[5]
    assert all("victim" not in p for p in problems.values())


def test_series_path_check_by_hand():
    from dualattn.data.pet import _unsafe_series_path

    for ok in ("s0", "a/b", "a/./b", "...", "a..b", "x/..y"):
        assert _unsafe_series_path(ok) is None, ok
    for bad in ("/abs", "../x", "a/../../x", "a/..", "..", "C:\\x", "\\\\server\\share\\x", "a\\..\\..\\x"):
        assert _unsafe_series_path(bad) is not None, bad

# ----------------------------------------------------------------------------- key location


def test_default_key_location(tmp_path, monkeypatch):
    """$DUALATTN_SECRET_DIR first, then $XDG_CONFIG_HOME/dualattn/secrets, then ~/.config/dualattn/secrets."""
    from dualattn.data.pet import default_key_file

    assert default_key_file() == tmp_path / "secret-dir" / "prepare-pet.key"
    monkeypatch.delenv("DUALATTN_SECRET_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_key_file() == tmp_path / "cfg" / "dualattn" / "secrets" / "prepare-pet.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_file() == tmp_path / "home" / ".config" / "dualattn" / "secrets" / "prepare-pet.key"


def test_concurrent_key_creation_gives_one_complete_key(tmp_path):
    """Eight threads racing to create the per-user key all read the same, complete key; no temp file is left."""
    from concurrent.futures import ThreadPoolExecutor

    from dualattn.data.pet import load_or_create_key

    path = tmp_path / "race" / "k.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_or_create_key(path), range(16)))
    assert len(set(keys)) == 1 and len(keys[0]) == 64 and int(keys[0], 16) >= 0
    assert [p.name for p in path.parent.iterdir()] == ["k.key"]
    assert (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ValueError, match="does not exist"):
        load_or_create_key(tmp_path / "nope.key", create=False)
    (tmp_path / "short.key").write_text("abc\n")
    with pytest.raises(ValueError, match="fewer than 8"):
        load_or_create_key(tmp_path / "short.key")
