"""Single-scan explanation: prediction and heatmap vs an independent pipeline, scan geometry kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualattn.data.readers import from_radiological_view, radiological_view
from dualattn.pipelines.scan import explain_scan, map_to_scan_grid, run_input_size, scan_to_model_input, write_scan_explanation


def _make_run(root: Path, *, variant: str = "exact", size: int = 32, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A run folder as `dualattn train` writes it (weights + config.yaml), from an untrained model."""
    import yaml

    from dualattn.models import create_model
    from dualattn.weights import save_model

    torch.manual_seed(seed)
    model = create_model("unet_encoder", variant=variant, in_channels=1, features=4)
    run = root / f"run-{variant}"
    run.mkdir(parents=True)
    save_model(model, run / "best.safetensors")
    save_model(model, run / "last.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "unet_encoder", "variant": variant,
                                                     "image_size": size}), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({"class_names": ["healthy", "tumour"]}), encoding="utf-8")
    return run, model.eval()


def _reference(model: torch.nn.Module, image_chw: np.ndarray, size: int,
               target: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent preprocessing: antialiased bilinear resize, per-channel z-score; softmax and exact map."""
    from dualattn.explain import explain

    x = torch.from_numpy(image_chw.astype(np.float32))[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
    x = (x - mean) / std
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    tgt = int(probs.argmax()) if target is None else target
    hm = explain(model, x, method="exact", block="block3", target=torch.tensor([tgt]))
    return probs, hm[0, 0]


def test_map_to_scan_grid_matches_torch_and_keeps_mass():
    rng = np.random.default_rng(0)
    m = rng.random((8, 8)).astype(np.float32)
    m /= m.sum()
    out = map_to_scan_grid(m, (40, 24))
    ref = F.interpolate(torch.from_numpy(m)[None, None], size=(40, 24), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(out, ref.numpy() * 64 / (40 * 24), rtol=1e-5)
    assert abs(out.sum() - 1.0) < 0.02
    const = np.full((4, 4, 4), 1 / 64, dtype=np.float32)
    np.testing.assert_allclose(map_to_scan_grid(const, (8, 12, 6)).sum(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be resized"):
        map_to_scan_grid(m, (4, 4, 4))


def test_scan_to_model_input_channels_and_notes():
    rgb = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32)
    notes: list[str] = []
    x = scan_to_model_input(rgb, in_channels=1, size=(16, 16), notes=notes)
    assert tuple(x.shape) == (1, 1, 16, 16)
    assert any("averaged" in n for n in notes) and any("resized to 16x16" in n for n in notes)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    y = scan_to_model_input(rgb[:1], in_channels=3, size=None)
    assert tuple(y.shape) == (1, 3, 20, 20) and torch.equal(y[0, 0], y[0, 2])
    with pytest.raises(ValueError, match="2 channels but the model expects 3"):
        scan_to_model_input(rgb[:2], in_channels=3, size=None)
    with pytest.raises(ValueError, match="channels-first"):
        scan_to_model_input(rgb[0, 0], in_channels=1, size=None)


def test_run_input_size(tmp_path):
    run, _ = _make_run(tmp_path, size=48)
    assert run_input_size(run) == (48,)
    assert run_input_size(tmp_path) is None


def test_explain_png_matches_reference(tmp_path):
    from PIL import Image

    run, model = _make_run(tmp_path, size=32)
    rng = np.random.default_rng(1)
    pixels = (rng.random((64, 48)) * 255).astype(np.uint8)  # larger than the model input: resized
    pixels[20:40, 10:30] = 255
    png = tmp_path / "case 1.png"
    Image.fromarray(pixels).save(png)
    result = explain_scan(png, run=run, method="exact")
    probs, hm_ref = _reference(model, pixels[None].astype(np.float32), 32)
    assert result.predicted_class == int(probs.argmax())
    assert result.class_name == ["healthy", "tumour"][result.predicted_class]
    np.testing.assert_allclose(result.probabilities, probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.heatmap_model, hm_ref.numpy(), atol=1e-6)
    assert result.heatmap.shape == (64, 48)
    np.testing.assert_allclose(result.heatmap, map_to_scan_grid(hm_ref.numpy(), (64, 48)), atol=1e-6)
    assert any("resized" in n for n in result.notes)

    files = write_scan_explanation(result, tmp_path / "out")
    assert sorted(files) == ["heatmap_npy", "overlay_png", "prediction_json"]  # a PNG has no geometry: no NIfTI
    pred = json.loads(files["prediction_json"].read_text())
    assert pred["predicted_class"] == result.predicted_class
    assert pred["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert pred["model_input_shape"] == [32, 32] and pred["heatmap_shape"] == [64, 48]
    np.testing.assert_array_equal(np.load(files["heatmap_npy"]), result.heatmap)
    assert files["overlay_png"].read_bytes()[:4] == b"\x89PNG"
    # named after the content digest, not the scan's file name (which may carry identifiers)
    sha12 = hashlib.sha256(png.read_bytes()).hexdigest()[:12]
    assert {p.name for p in files.values()} == {f"scan-{sha12}.{k}" for k in ("prediction.json", "heatmap.npy",
                                                                               "overlay.png")}
    assert pred["files"]["overlay_png"] == f"scan-{sha12}.overlay.png"


def test_explain_nifti_keeps_geometry(tmp_path):
    import nibabel as nib

    run, model = _make_run(tmp_path, size=32)
    rng = np.random.default_rng(2)
    vol = rng.random((32, 32, 1)).astype(np.float32)  # a 2-D slice stored as (X, Y, 1)
    affine = np.array([[0.9, 0, 0, -20.0], [0, 1.1, 0, 5.0], [0, 0, 3.0, 7.5], [0, 0, 0, 1]])
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    result = explain_scan(path, run=run, method="exact")
    probs, hm_ref = _reference(model, vol[None, :, :, 0], 32)
    np.testing.assert_allclose(result.probabilities, probs.numpy(), atol=1e-5)
    assert result.notes == []  # same size: nothing resized
    files = write_scan_explanation(result, tmp_path / "out")
    img = nib.load(str(files["heatmap_nifti"]))
    np.testing.assert_allclose(img.affine, affine)
    data = np.asarray(img.dataobj).squeeze()
    assert data.shape == (32, 32)
    np.testing.assert_allclose(data, map_to_scan_grid(hm_ref.numpy(), (32, 32)), atol=1e-6)


def test_explain_volume_with_2d_model_slice_by_slice(tmp_path):
    import nibabel as nib

    run, model = _make_run(tmp_path, size=32)
    vol = np.random.default_rng(3).random((32, 32, 3)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    path = tmp_path / "vol.nii"
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    result = explain_scan(path, run=run, method="exact")
    assert result.heatmap.shape == (32, 32, 3)
    assert result.slice_axis["axis"] == 2 and result.slice_axis["plane"] == "axial"  # 4 mm slices
    tgt = result.predicted_class  # every slice's map explains the volume's class
    pos = []
    for k in range(3):  # the model sees each axial slice in radiological orientation
        probs, hm = _reference(model, radiological_view(vol[:, :, k])[None].copy(), 32, target=tgt)
        np.testing.assert_allclose(result.heatmap[..., k],
                                   from_radiological_view(map_to_scan_grid(hm.numpy(), (32, 32))), atol=1e-6)
        np.testing.assert_allclose(result.slices[k]["probabilities"], probs.numpy(), atol=1e-5)
        assert result.slices[k]["index"] == k
        pos.append(float(probs[1]))
    assert result.deciding_slice == int(np.argmax(pos))  # volume rule max: the most 'lesion' slice
    np.testing.assert_allclose(result.probabilities, result.slices[result.deciding_slice]["probabilities"])
    assert any("slice" in n for n in result.notes)
    files = write_scan_explanation(result, tmp_path / "out")
    img = nib.load(str(files["heatmap_nifti"]))
    assert img.shape == (32, 32, 3)
    np.testing.assert_allclose(img.affine, affine)


def test_explain_scan_errors(tmp_path):
    run, _ = _make_run(tmp_path, variant="unconstrained", size=32)
    np.save(tmp_path / "x.npy", np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="unknown method"):
        explain_scan(tmp_path / "x.npy", run=run, method="nope")
    with pytest.raises(ValueError, match="does not exist"):
        explain_scan(tmp_path / "missing.png", run=run)
    with pytest.raises(ValueError, match="variant"):  # an unconstrained run has no exact map
        explain_scan(tmp_path / "x.npy", run=run, method="exact")
    # ... but its own attention works, and so does cvx
    res = explain_scan(tmp_path / "x.npy", run=run, method="cvx")
    assert res.heatmap.shape == (32, 32)


def test_explain_cli_on_png(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from dualattn.cli import app

    run, _ = _make_run(tmp_path, size=32)
    Image.fromarray((np.random.default_rng(4).random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "a.png"), "--run", str(run), "--out",
                                      str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["method"] == "exact" and 0.0 <= summary["probability"] <= 1.0
    assert sum(summary["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    sha12 = hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()[:12]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        f"scan-{sha12}.heatmap.npy", f"scan-{sha12}.overlay.png", f"scan-{sha12}.prediction.json"]
    assert summary["files"]["overlay_png"] == str(tmp_path / "o" / f"scan-{sha12}.overlay.png")
    bad = CliRunner().invoke(app, ["explain", str(tmp_path / "a.png"), "--run", str(run), "--method", "nope",
                                   "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2


def _explained_png(tmp_path: Path, name: str, seed: int = 5, run: Path | None = None):
    from PIL import Image

    if run is None:
        run, _ = _make_run(tmp_path, size=32)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((32, 32)) * 255).astype(np.uint8)).save(path)
    return explain_scan(path, run=run, method="exact"), run


def test_default_output_names_are_the_content_digest_not_the_file_name(tmp_path):
    result, _ = _explained_png(tmp_path, "P12345_Smith/Smith_John_T1.png")
    files = write_scan_explanation(result, tmp_path / "out")
    expect = "scan-" + hashlib.sha256(result.scan_path.read_bytes()).hexdigest()[:12]
    assert {p.name for p in files.values()} == {f"{expect}.heatmap.npy", f"{expect}.overlay.png",
                                                f"{expect}.prediction.json"}
    listing = [p.name for p in (tmp_path / "out").iterdir()]
    for needle in ("Smith", "John", "T1", "P12345"):
        assert not any(needle.lower() in n.lower() for n in listing), (needle, listing)
    pred = json.loads(files["prediction_json"].read_text())
    assert pred["scan"]["sha256"].startswith(expect[len("scan-"):])
    for needle in ("Smith", "John", "P12345"):
        assert needle not in json.dumps(pred["files"]), needle


def test_default_output_names_depend_on_content_only(tmp_path):
    a, run = _explained_png(tmp_path, "Smith_John_T1.png", seed=5)
    b, _ = _explained_png(tmp_path, "other/Doe_Jane.png", seed=5, run=run)  # same pixels, other name
    c, _ = _explained_png(tmp_path, "Smith_John_T2.png", seed=6, run=run)  # other pixels
    fa = write_scan_explanation(a, tmp_path / "oa")
    fb = write_scan_explanation(b, tmp_path / "ob")
    fc = write_scan_explanation(c, tmp_path / "oc")
    assert a.scan_path.read_bytes() == b.scan_path.read_bytes()
    assert fa["prediction_json"].name == fb["prediction_json"].name
    assert fa["prediction_json"].name != fc["prediction_json"].name
    # deterministic: the same scan written again gets the same names
    assert write_scan_explanation(a, tmp_path / "oa2")["overlay_png"].name == fa["overlay_png"].name


def test_keep_name_and_explicit_stem(tmp_path):
    result, _ = _explained_png(tmp_path, "case 1.png")
    files = write_scan_explanation(result, tmp_path / "keep", keep_name=True)
    assert files["prediction_json"].name == "case 1.prediction.json"
    assert files["overlay_png"].name == "case 1.overlay.png"
    assert json.loads(files["prediction_json"].read_text())["files"]["heatmap_npy"] == "case 1.heatmap.npy"
    # an explicit stem wins over keep_name
    files = write_scan_explanation(result, tmp_path / "named", stem="study-7", keep_name=True)
    assert sorted(p.name for p in files.values()) == ["study-7.heatmap.npy", "study-7.overlay.png",
                                                      "study-7.prediction.json"]


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../up", "a\\b", "nul\0byte", "/abs"])
def test_bad_explicit_stem_is_refused(tmp_path, bad):
    result, _ = _explained_png(tmp_path, "x.png")
    with pytest.raises(ValueError, match="invalid output name") as err:
        write_scan_explanation(result, tmp_path / "out", stem=bad)
    assert repr(bad) in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_explain_cli_keep_name_and_name(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from dualattn.cli import app

    run, _ = _make_run(tmp_path, size=32)
    scan = tmp_path / "Smith_John_T1.png"
    Image.fromarray((np.random.default_rng(7).random((32, 32)) * 255).astype(np.uint8)).save(scan)
    runner = CliRunner()
    base = ["explain", str(scan), "--run", str(run), "--method", "exact", "--out"]
    res = runner.invoke(app, [*base, str(tmp_path / "keep"), "--keep-name"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == [
        "Smith_John_T1.heatmap.npy", "Smith_John_T1.overlay.png", "Smith_John_T1.prediction.json"]
    res = runner.invoke(app, [*base, str(tmp_path / "named"), "--name", "case-0042"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == [
        "case-0042.heatmap.npy", "case-0042.overlay.png", "case-0042.prediction.json"]
    # --record-path does not change the names
    res = runner.invoke(app, [*base, str(tmp_path / "rec"), "--record-path"])
    assert res.exit_code == 0, res.output
    sha12 = hashlib.sha256(scan.read_bytes()).hexdigest()[:12]
    assert (tmp_path / "rec" / f"scan-{sha12}.prediction.json").is_file()
    assert not any("Smith" in p.name for p in (tmp_path / "rec").iterdir())
    # a bad --name: exit code 2 with the reason, nothing written
    bad = runner.invoke(app, [*base, str(tmp_path / "bad"), "--name", "../escape"])
    assert bad.exit_code == 2
    assert "invalid output name" in bad.output
    assert not (tmp_path / "bad").exists() and not (tmp_path / "escape.prediction.json").exists()


def test_class_names_from_the_training_dataset(tmp_path):
    import yaml

    from dualattn.pipelines.scan import run_class_names

    run, _ = _make_run(tmp_path, size=32)
    (run / "summary.json").write_text("{}", encoding="utf-8")
    assert run_class_names(run) is None
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"class_names": ["no_tumor", "tumor"]}), encoding="utf-8")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["dataset"] = str(data)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert run_class_names(run) == ["no_tumor", "tumor"]


def test_a_variants_every_map_fits_its_run_and_only_class_dependent_maps_take_a_target(tmp_path):
    """additive_contribution is the additive model's second map (refused before: its name is not the variant's),
    and it depends on the class, so --target gets no "same map for every class" note."""
    from types import SimpleNamespace

    from dualattn.pipelines.scan.run import _check_method_fits_run, _target_note

    additive = SimpleNamespace(attention_blocks=("block3", "block4"), map_blocks=("block3", "block4"),
                               config={"variant": "additive"})
    _check_method_fits_run("additive_contribution", additive, tmp_path, "block3")
    _check_method_fits_run("additive", additive, tmp_path, "block3")
    with pytest.raises(ValueError, match="use --method additive"):
        _check_method_fits_run("exact", additive, tmp_path, "block3")
    assert _target_note("additive_contribution", 1, ["no", "yes"], volume=False) is None
    assert "same map for every class" in _target_note("additive", 1, ["no", "yes"], volume=False)
