"""Patient privacy: a DICOM series whose tags carry a patient name, ID, birth date, accession number
and UIDs goes through ``dualattn prepare pet`` and ``dualattn explain``; no output file (raw bytes,
gzip members, PNG text chunks, NIfTI headers, JSON/CSV), log record or console line holds any of them.

The series folder and the slice files are named the way PACS exports often name them — after the
patient ID and the SOP instance UIDs — so the file-system names are identifiers too.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pytest

from _reliability_helpers import PATIENT, all_files, dicom_series, find_identifiers, make_run


def _identifiers(series_dirs: list[Path]) -> dict[str, str]:
    """PATIENT plus every per-slice UID actually written (SOP instance UIDs are generated)."""
    from pydicom import dcmread

    ids = dict(PATIENT)
    for d in series_dirs:
        for f in sorted(d.iterdir()):
            ds = dcmread(str(f), stop_before_pixels=True)
            ids[f"SOPInstanceUID {f.name}"] = str(ds.SOPInstanceUID)
    return ids


def _series(raw: Path, name: str, *, seed: int, tags: dict[str, str]) -> Path:
    rng = np.random.default_rng(seed)
    vol = (rng.random((6, 12, 12)) * 3000).astype(np.uint16)
    vol[2:4, 4:8, 4:8] += 20000
    folder = dicom_series(raw / name, vol, tags=tags, pet=True)
    # rename slices after their SOP instance UID, as PACS exports do
    from pydicom import dcmread

    for f in sorted(folder.iterdir()):
        f.rename(folder / f"{dcmread(str(f), stop_before_pixels=True).SOPInstanceUID}.dcm")
    return folder


def _assert_clean(roots: list[Path], texts: dict[str, str], identifiers: dict[str, str]) -> int:
    files = all_files(*roots)
    hits = find_identifiers(files, identifiers)
    for where, text in texts.items():
        for tag, value in identifiers.items():
            parts = [value] + [p for p in value.split("^") if len(p) >= 4]
            if any(p.lower() in text.lower() for p in parts):
                hits.append(f"{where}: {tag}")
    assert not hits, "identifiers leaked:\n" + "\n".join(hits)
    return len(files)


def test_prepare_pet_and_explain_leak_no_identifier(tmp_path, caplog, monkeypatch):
    from typer.testing import CliRunner

    from dualattn.cli import app

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # any cache under ~ lands in the grep
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)  # the pseudonym key lands under ~/.config: grepped too
    monkeypatch.delenv("DUALATTN_SECRET_DIR", raising=False)
    caplog.set_level(logging.DEBUG)
    raw = tmp_path / "raw"
    good = _series(raw, PATIENT["PatientID"], seed=0, tags=PATIENT)
    other = dict(PATIENT, PatientID=PATIENT["PatientID"] + "-B")
    second = _series(raw, f"{PATIENT['PatientName'].split('^')[0]}_CT", seed=1, tags=other)
    # a broken series (not PET) whose error message would carry its folder name and header values
    broken = _series(raw, f"{PATIENT['AccessionNumber']}_broken", seed=2, tags=PATIENT)
    from pydicom import dcmread

    for f in broken.iterdir():
        ds = dcmread(str(f))
        ds.Modality = "CT"
        ds.save_as(str(f))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "series,label,patient\n"
        f"{good.name},severe,{PATIENT['PatientID']}\n"
        f"{second.name},normal,{PATIENT['PatientName']}\n"
        f"{broken.name},mild,{PATIENT['PatientID']}\n"
        f"{PATIENT['PatientBirthDate']}_missing,mild,x\n"
    )
    identifiers = _identifiers([good, second, broken])
    raw_before = {p: p.stat().st_mtime_ns for p in all_files(raw)}

    runner = CliRunner()
    prep_out = tmp_path / "prepared"
    res = runner.invoke(app, ["-v", "prepare", "pet", str(raw), str(labels), str(prep_out), "--size", "16"])
    assert res.exit_code == 0, res.output
    assert "2 series written, 2 bad" in res.output

    # a trained (here: untrained) 2-D run explains the 3-D series slice by slice, and one slice file
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    outs = []
    for k, scan in enumerate([raw / good.name, sorted(good.iterdir())[3]]):
        out = tmp_path / f"explained{k}"
        # explained straight from the identifying path: outputs are named after the content's digest
        res2 = runner.invoke(app, ["-v", "explain", str(scan), "--run", str(run), "--method", "exact", "--out", str(out)])
        assert res2.exit_code == 0, res2.output
        outs.append((out, res2.output))
    assert len(list(outs[0][0].glob("scan-*.heatmap.nii.gz"))) == 1

    texts = {"prepare console": res.output, "log records": "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)}
    texts.update({f"explain console {k}": o for k, (_, o) in enumerate(outs)})
    n_files = _assert_clean([prep_out, *(o for o, _ in outs), tmp_path / "home", run], texts, identifiers)
    assert n_files >= 10
    # the inputs were only read
    assert {p: p.stat().st_mtime_ns for p in all_files(raw)} == raw_before


def test_the_grep_finds_planted_identifiers(tmp_path):
    """The detector itself: identifiers hidden in a gzip member, a PNG zTXt chunk, a NIfTI header
    description, UTF-16 text and a file name are all found (so a clean result above means clean)."""
    import gzip
    import json

    import nibabel as nib
    from PIL import Image, PngImagePlugin

    d = tmp_path / "o"
    d.mkdir()
    (d / "a.json.gz").write_bytes(gzip.compress(json.dumps({"x": PATIENT["AccessionNumber"]}).encode()))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"patient {PATIENT['PatientID']}", zip=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / "b.png", pnginfo=info)
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header["descrip"] = PATIENT["PatientBirthDate"].encode()
    nib.save(img, str(d / "c.nii.gz"))
    (d / "d.txt").write_bytes("Quintessa".encode("utf-16-le"))
    (d / f"{PATIENT['StudyInstanceUID']}.npy").write_bytes(b"")
    hits = find_identifiers(all_files(d), PATIENT)
    joined = "\n".join(hits)
    for tag, name in [("AccessionNumber", "a.json.gz"), ("PatientID", "b.png"), ("PatientBirthDate", "c.nii.gz"),
                      ("PatientName", "d.txt"), ("StudyInstanceUID", ".npy")]:
        assert any(tag in h and name in h for h in hits), (tag, joined)


def test_patient_pseudonyms_cannot_be_reversed_from_the_output_alone(tmp_path, monkeypatch):
    """Pseudonyms in labels.csv must not be reversible by someone holding only the output folder:
    patient IDs have little entropy, so hashing them with a salt stored in that folder is not enough.
    (Fixed: the pseudonyms are HMACs keyed by a secret kept outside the output; see
    tests/test_data_pet.py for the positive control with the real key.)"""
    import csv
    import hashlib
    import hmac
    import json

    monkeypatch.setenv("DUALATTN_SECRET_DIR", str(tmp_path / "secret"))
    pet = pytest.importorskip("dualattn.data.pet")
    raw = tmp_path / "raw"
    dicom_series(raw / "s0", (np.random.default_rng(0).random((5, 8, 8)) * 3000).astype(np.uint16), pet=True)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"series,label,patient\ns0,mild,{PATIENT['PatientID']}\n")
    out = tmp_path / "out"
    pet.prepare_pet(raw, labels, out, size=16)
    pseudonym = next(csv.DictReader((out / "labels.csv").open()))["patient"]
    # the attacker: every readable string in the output folder as a candidate secret, and the
    # ID format PID-8817-NNNN (10^4 candidates)
    secrets_ = {""}
    for f in all_files(out):
        if f.suffix == ".json" or f.name.startswith("."):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                stack = [json.loads(f.read_text())]
                while stack:
                    v = stack.pop()
                    if isinstance(v, dict):
                        stack.extend(v.values())
                    elif isinstance(v, list):
                        stack.extend(v)
                    elif isinstance(v, str):
                        secrets_.add(v)
    found = []
    for secret in secrets_:
        for i in range(10_000):
            cand = f"PID-8817-{i:04d}"
            digest = hashlib.sha256((secret + "\x00" + "patient:" + cand).encode()).hexdigest()
            keyed = hmac.new(secret.encode(), ("patient:" + cand).encode(), hashlib.sha256).hexdigest()
            if pseudonym in (f"pt-{digest[:12]}", f"pt-{digest[:24][:12]}", f"pt-{keyed[:12]}"):
                found.append(cand)
    assert not found, f"patient ID recovered from the output folder alone: {found}"
