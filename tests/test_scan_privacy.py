"""What ``dualattn explain`` records about a scan: its format and a content digest, not its path.

Folder names often carry patient identifiers: the prediction JSON and the output file names carry
neither (``--record-path`` opts in to the path); a DICOM series folder named by patient ID gets a
digest name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from _reliability_helpers import PATIENT, dicom_series, make_run, small_png as _png


def test_prediction_json_records_format_and_digest_not_the_path(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    folder = tmp_path / f"{PATIENT['PatientID']}_{PATIENT['PatientName']}"
    scan = _png(folder / "image.png")
    runner = CliRunner()
    res = runner.invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    sha = hashlib.sha256(scan.read_bytes()).hexdigest()
    js = tmp_path / "o" / f"scan-{sha[:12]}.prediction.json"  # the file names carry no identifiers either
    pred = json.loads(js.read_text())
    assert pred["scan"] == {"format": "png", "sha256": sha}
    raw = js.read_bytes()
    for needle in (PATIENT["PatientID"], "Quintessa", folder.name, str(folder)):  # (the run folder is recorded)
        assert needle.encode() not in raw, needle
        assert not any(needle in p.name for p in (tmp_path / "o").iterdir()), needle
    # opt in: the path in the JSON, independent of the file names
    res = runner.invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o2"), "--record-path"])
    assert res.exit_code == 0, res.output
    pred2 = json.loads((tmp_path / "o2" / js.name).read_text())
    assert pred2["scan"]["path"] == str(scan) and pred2["scan"]["sha256"] == pred["scan"]["sha256"]
    res = runner.invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o3"), "--keep-name"])
    assert res.exit_code == 0, res.output
    pred3 = json.loads((tmp_path / "o3" / "image.prediction.json").read_text())
    assert "path" not in pred3["scan"]


def test_dicom_series_folder_named_by_patient_id_gets_a_digest_name(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app
    from dualattn.pipelines.scan import scan_record

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    series = dicom_series(tmp_path / PATIENT["PatientID"], (np.arange(3 * 16 * 16).reshape(3, 16, 16) % 97 * 5)
                          .astype(np.uint16), pet=True)
    res = CliRunner().invoke(app, ["explain", str(series), "--run", str(run), "--method", "exact",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stem = "scan-" + scan_record(series)["sha256"][:12]
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert f"{stem}.prediction.json" in names and f"{stem}.heatmap.nii.gz" in names, names
    assert not any(PATIENT["PatientID"] in n for n in names), names


def test_scan_record_by_hand(tmp_path):
    from dualattn.pipelines.scan import scan_record

    nii = tmp_path / "a.NII.GZ"
    nii.write_bytes(b"abc")
    assert scan_record(nii) == {"format": "nii.gz", "sha256": hashlib.sha256(b"abc").hexdigest()}
    # a DICOM series folder: digest over the sorted file digests, independent of the (UID) file names
    s1 = dicom_series(tmp_path / "s1", (np.arange(3 * 4 * 4).reshape(3, 4, 4) * 7).astype(np.uint16), pet=True)
    files = sorted(s1.iterdir())
    expect = hashlib.sha256("\n".join(sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)).encode())
    rec = scan_record(s1)
    assert rec == {"format": "dicom-series", "sha256": expect.hexdigest()}
    for k, f in enumerate(files):
        f.rename(s1 / f"renamed{k}.dcm")
    (s1 / ".hidden").write_bytes(b"x")
    assert scan_record(s1) == rec
    files[0].parent.joinpath("renamed0.dcm").write_bytes(b"changed")
    assert scan_record(s1)["sha256"] != rec["sha256"]
