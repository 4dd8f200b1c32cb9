"""Resource bounds: scans far larger than the model's input are resized with a clear note (never run
at full size into an out-of-memory crash); ``explain`` on a 3-D volume works; peak memory measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _reliability_helpers import make_run

TESTS = Path(__file__).resolve().parent


def _png(path: Path, side: int) -> Path:
    from PIL import Image

    img = (np.random.default_rng(0).random((side, side)) * 60).astype(np.uint8)
    img[side // 4 : side // 2, side // 3 : side // 2] += 150
    Image.fromarray(img).save(path)
    return path


def test_large_png_is_resized_with_a_note_and_mapped_back(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    run = make_run(tmp_path, size=32)
    scan = _png(tmp_path / "big.png", 1024)
    res = CliRunner().invoke(app, ["explain", str(scan), "--run", str(run), "--method", "attention", "--out", str(tmp_path / "o"),
                                   "--keep-name"])
    assert res.exit_code == 0, res.output
    assert "note:" in res.output and "1024x1024" in res.output and "resized to 32x32" in res.output
    pred = json.loads((tmp_path / "o" / "big.prediction.json").read_text())
    assert pred["model_input_shape"] == [32, 32] and pred["heatmap_shape"] == [1024, 1024]
    heat = np.load(tmp_path / "o" / "big.heatmap.npy")
    assert heat.shape == (1024, 1024) and np.isfinite(heat).all()
    assert heat.sum() == pytest.approx(1.0, rel=0.02)  # mass kept through the resize back


def test_run_without_recorded_size_is_bounded(tmp_path):
    """No training size in config.yaml: a 1024^2 image is not run at full size (512^2 at most)."""
    from dualattn.pipelines.scan import MAX_MODEL_VOXELS, explain_scan

    run = make_run(tmp_path, size=32)
    (run / "config.yaml").write_text("model: unet_encoder\nvariant: exact\n")
    small = explain_scan(_png(tmp_path / "small.png", 64), run=run, method="attention")
    assert small.model_input_shape == (64, 64) and not small.notes  # small scans keep their grid
    big = explain_scan(_png(tmp_path / "big.png", 1024), run=run, method="attention")
    assert np.prod(big.model_input_shape) <= MAX_MODEL_VOXELS[2]
    assert big.model_input_shape == (512, 512)
    assert any("records no training size" in n for n in big.notes)
    assert big.heatmap.shape == (1024, 1024) and np.isfinite(big.heatmap).all()


def test_explain_a_3d_volume_with_a_3d_model(tmp_path):
    import nibabel as nib

    from dualattn.pipelines.scan import explain_scan, write_scan_explanation

    run = make_run(tmp_path, size=16, spatial_dims=3)
    vol = np.random.default_rng(0).random((40, 36, 30)).astype(np.float32)
    vol[10:20, 10:18, 8:14] += 3
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    affine[:3, 3] = [-30, 12, 5]
    scan = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(scan))
    result = explain_scan(scan, run=run, method="exact")
    assert result.model_input_shape == (16, 16, 16)
    assert result.heatmap.shape == (40, 36, 30) and np.isfinite(result.heatmap).all()
    assert any("resized to 16x16x16" in n for n in result.notes)
    files = write_scan_explanation(result, tmp_path / "o")
    out = nib.load(str(files["heatmap_nifti"]))
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_allclose(np.asarray(out.dataobj), result.heatmap)


_PEAK = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, {tests!r})
    from _reliability_helpers import make_run
    from dualattn.pipelines.scan import explain_scan, write_scan_explanation
    root = Path({root!r})
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    import torch, nibabel as nib
    from PIL import Image
    torch.set_num_threads(2)
    out = {{"after_imports_mib": rss()}}
    run3 = make_run(root, size=16, spatial_dims=3, name="run3d")
    (run3 / "config.yaml").write_text("model: unet_encoder\\n")  # no recorded size: the cap applies
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((160, 160, 120)).astype(np.float32), np.eye(4)),
             str(root / "v.nii.gz"))
    r = explain_scan(root / "v.nii.gz", run=run3, method="exact")
    write_scan_explanation(r, root / "o3")
    out["volume_3d_mib"] = rss()
    out["volume_input"] = list(r.model_input_shape)
    run2 = make_run(root, size=32, name="run2d")
    Image.fromarray((np.random.default_rng(0).random((2048, 2048)) * 255).astype(np.uint8)).save(root / "big.png")
    r = explain_scan(root / "big.png", run=run2, method="exact")
    write_scan_explanation(r, root / "o2")
    out["png_2048_mib"] = rss()
    out["png_notes"] = r.notes
    print(json.dumps(out))
    """
)


def test_peak_memory_of_large_scans(tmp_path):
    """A 160x160x120 volume (first) and a 2048^2 PNG (a run without a recorded size) explained in a fresh
    process: peak resident memory stays far below the machine's (bound: 1.5 GiB)."""
    code = _PEAK.format(tests=str(TESTS), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert any("2048x2048" in n for n in out["png_notes"])
    assert np.prod(out["volume_input"]) <= 128**3
    assert out["png_2048_mib"] < 1536 and out["volume_3d_mib"] < 1536, out
