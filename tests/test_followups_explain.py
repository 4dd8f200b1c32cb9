"""Follow-ups of the reliability review for ``dualattn explain``:

* the prediction JSON records the scan's format and a content digest, not its path (folder names
  often carry patient identifiers); ``--record-path`` opts in;
* the default method is the run's own map (the variant-named attention method, e.g. ``tau_l``;
  ``gradcam`` for a baseline), so runs of every variant work without ``--method`` (the old default
  ``exact`` failed on other variants); a ``tau_l`` run's map is taken from its gated ``block4``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from _reliability_helpers import PATIENT, dicom_series, make_run


def _png(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = (rng.random((16, 16)) * 255).astype(np.uint8)
    px[4:9, 5:11] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path)
    return path


@pytest.mark.parametrize("variant,expected", [("baseline", "gradcam"), ("unconstrained", "unconstrained"),
                                              ("tau_l", "tau_l"), ("exact", "exact")])
def test_default_method_is_the_runs_own_map(tmp_path, variant, expected):
    from typer.testing import CliRunner

    from dualattn.cli import app
    from dualattn.pipelines.scan import explain_scan

    run = make_run(tmp_path / "runs", variant=variant, size=16)
    scan = _png(tmp_path / "scan.png")
    res = CliRunner().invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "--keep-name"])
    assert res.exit_code == 0, res.output
    pred = json.loads((tmp_path / "o" / "scan.prediction.json").read_text())
    assert pred["method"] == expected
    # the same map as asking for that method explicitly
    explicit = explain_scan(scan, run=run, method=expected)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "scan.heatmap.npy"), explicit.heatmap)
    if variant != "baseline":  # the variant's map is the generic "attention" one (mu where the variant has it)
        generic = explain_scan(scan, run=run, method="attention")
        assert generic.block == explicit.block == ("block4" if variant == "tau_l" else "block3")
        np.testing.assert_allclose(explicit.heatmap_model, generic.heatmap_model, atol=1e-7)


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
