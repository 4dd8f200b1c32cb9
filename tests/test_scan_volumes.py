"""``dualattn explain`` on volumes: slices as acquired, background skipped, the volume rule, the deciding slice
drawn, class names in the JSON and title, the shared block parser, the method help.

The "lesion detector" is a real gated run whose logits are replaced by a hand rule (lesion logit =
``2 * (max of the normalized slice - 4)``): a slice with a small bright spot is the most "lesion" one,
so the expected deciding slice is known exactly while the maps still come from the run's gates.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _reliability_helpers import dicom_slice, make_run, small_png
from dualattn.data.readers import radiological_view


def _lesion_detector(monkeypatch, run: Path) -> None:
    """Make ``RunDir(run).load_model`` return the run's model with the hand-written lesion logit."""
    from dualattn.runs import RunDir

    real = RunDir.load_model

    def load(self, which=None):
        model = real(self, which)
        orig = model.forward_with_attention

        def forward_with_attention(x):
            out = orig(x)
            score = x.flatten(1).amax(1)
            logits = torch.stack([torch.zeros_like(score), 2.0 * (score - 4.0)], 1)
            return out._replace(logits=logits)

        model.forward_with_attention = forward_with_attention
        return model

    monkeypatch.setattr(RunDir, "load_model", load)


N_SLICES, LESION, EMPTY = 6, 3, 5  # position-order indices of the lesion slice and of the all-zero slice


def _series(folder: Path, *, tilt_deg: float = 15.0) -> list[np.ndarray]:
    """A tilted axial series, files in shuffled order with scrambled instance numbers; returns the slices in
    position order (as a viewer stacks them). Slice LESION has a bright 2x2 spot at rows 3-4, columns 9-10;
    slice EMPTY is all zeros."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(0)
    t = np.deg2rad(tilt_deg)
    row_cos, col_cos = [1.0, 0.0, 0.0], [0.0, float(np.cos(t)), float(np.sin(t))]
    normal = np.cross(row_cos, col_cos)
    uid = generate_uid()
    slices = []
    for k in range(N_SLICES):
        px = rng.integers(100, 200, size=(16, 16)).astype(np.uint16)
        if k == LESION:
            px[3:5, 9:11] = 3000
        if k == EMPTY:
            px[:] = 0
        slices.append(px)
    for j, k in enumerate(rng.permutation(N_SLICES)):
        pos = np.array([-20.0, 10.0, 40.0]) + 3.0 * k * normal
        dicom_slice(folder / f"IM{j:04d}.dcm", slices[k], position=tuple(float(v) for v in pos),
                    instance=int(N_SLICES - k), modality="MR",
                    tags={"ImageOrientationPatient": [*row_cos, *col_cos], "SeriesInstanceUID": uid})
    return slices


def _run_cli(args: list[str]):
    from typer.testing import CliRunner

    from dualattn.cli import app

    return CliRunner().invoke(app, args)


def test_dicom_series_deciding_slice_is_the_lesion_slice_and_the_overlay_draws_it(tmp_path, monkeypatch):
    from dualattn.pipelines.scan import explain_scan, overlay_title

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    _lesion_detector(monkeypatch, run)
    series = tmp_path / "series"
    slices = _series(series)
    res = _run_cli(["explain", str(series), "--run", str(run), "--out", str(tmp_path / "o"), "--name", "case"])
    assert res.exit_code == 0, res.output
    pred = json.loads((tmp_path / "o" / "case.prediction.json").read_text())
    assert [e["index"] for e in pred["slices"]] == list(range(N_SLICES))  # one entry per slice, position order
    assert pred["slices"][EMPTY] == {"index": EMPTY, "skipped": "background"}
    assert pred["background_slices"] == 1 and "1 of 6 slices skipped as background" in res.output
    assert all(len(e["probabilities"]) == 2 for i, e in enumerate(pred["slices"]) if i != EMPTY)
    assert pred["deciding_slice"] == LESION and pred["overlay"]["slice"] == LESION
    assert pred["slice_axis"]["plane"] == "axial" and pred["slice_axis"]["file_axis"] == 0
    assert pred["volume_rule"] == "max"
    assert pred["class_name"] == "lesion" and pred["class_names"] == ["healthy", "lesion"]
    lesion_p = [e["probabilities"][1] for e in pred["slices"] if "probabilities" in e]
    assert pred["probability"] == pytest.approx(max(lesion_p))
    assert "radiological" in pred["overlay"]["orientation"]
    # the heatmap files lie on the series' own grid (slices in position order, rows, columns)
    npy = np.load(tmp_path / "o" / "case.heatmap.npy")
    nii = nib.load(str(tmp_path / "o" / "case.heatmap.nii.gz"))
    assert npy.shape == nii.shape == (N_SLICES, 16, 16)
    np.testing.assert_allclose(np.asarray(nii.dataobj), npy)
    assert not npy[EMPTY].any() and npy[LESION].sum() == pytest.approx(1.0, abs=0.05)

    # the returned object: the overlay's image is the lesion slice, as a viewer shows it
    result = explain_scan(series, run=run)
    assert result.overlay_slice == result.deciding_slice == LESION
    np.testing.assert_array_equal(result.overlay_image[0], slices[LESION].astype(np.float32))
    assert result.overlay_map.shape == (16, 16)
    title = overlay_title(result)  # slices numbered from 1, with the instance number a viewer shows
    assert "lesion" in title and f"slice {LESION + 1} of {N_SLICES} (axial), DICOM instance {N_SLICES - LESION}" in title
    assert result.edge_labels == ("A", "P", "R", "L")
    assert pred["overlay"]["slice_number"] == LESION + 1 and pred["overlay"]["instance_number"] == N_SLICES - LESION
    # the tri-planar view cuts through the lesion slice where its map peaks, the voxel the overlay marks
    axis = result.slice_axis["axis"]
    assert result.geometry.source_index(axis, result.volume_point[axis]) == (0, LESION)
    on_slice = np.take(result.heatmap, result.volume_point[axis], axis=axis)
    others = [a for a in range(3) if a != axis]
    assert on_slice[result.volume_point[others[0]], result.volume_point[others[1]]] == pytest.approx(on_slice.max())
    r, c = result.overlay_point
    assert result.overlay_map[r, c] == pytest.approx(result.overlay_map.max())
    assert (tmp_path / "o" / "case.triplanar.png").is_file()
    # the terminal gets a short summary, not the JSON
    assert "{" not in res.stdout and len(res.stdout.splitlines()) < 15
    assert f"deciding:   slice {LESION + 1} of {N_SLICES} (axial), DICOM instance {N_SLICES - LESION}" in res.stdout
    assert "class:      lesion, probability 1.00" in res.stdout and "sharpness:" in res.stdout
    assert "case.prediction.json" in res.stdout and "case.triplanar.png" in res.stdout


@pytest.mark.parametrize("codes,file_axis,file_index", [("LPS", 2, 3), ("IPL", 0, 1)])
def test_non_canonical_nifti_volume_cut_along_its_slice_axis(tmp_path, monkeypatch, codes, file_axis, file_index):
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    from dualattn.pipelines.scan import explain_scan, write_scan_explanation

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    _lesion_detector(monkeypatch, run)
    rng = np.random.default_rng(1)
    canon = rng.uniform(100, 200, size=(16, 16, 5)).astype(np.float32)  # (R, A, S), 4 mm axial slices
    canon[10:12, 4:6, 3] = 3000.0  # the lesion: axial slice z = 3
    canon[:, :, 0] = 0.0  # an empty slice
    canon_affine = np.diag([1.0, 1.0, 4.0, 1.0])
    to_file = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    data = nib.orientations.apply_orientation(canon, to_file)
    affine = canon_affine @ inv_ornt_aff(to_file, canon.shape)
    path = tmp_path / f"{codes}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))

    result = explain_scan(path, run=run)
    assert result.slice_axis == {"axis": 2, "file_axis": file_axis, "plane": "axial",
                                 "from": "the axis with the largest voxel spacing"}
    assert result.deciding_slice == file_index  # the file's own index of axial slice z = 3
    assert [e["index"] for e in result.slices] == list(range(5))
    empty = 0 if file_index == 3 else 4  # z = 0 in the file's order
    assert result.slices[empty] == {"index": empty, "skipped": "background"}
    np.testing.assert_array_equal(result.overlay_image[0], radiological_view(canon[:, :, 3]))
    files = write_scan_explanation(result, tmp_path / "o")
    img = nib.load(str(files["heatmap_nifti"]))
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)  # the input's own grid, voxel for voxel
    assert img.shape == data.shape
    on_file = np.asarray(img.dataobj)
    np.testing.assert_allclose(on_file, np.load(files["heatmap_npy"]))
    assert np.take(on_file, file_index, axis=file_axis).sum() == pytest.approx(1.0, abs=0.05)
    assert not np.take(on_file, empty, axis=file_axis).any()
    # --axis overrides: coronal cuts along A-P (16 slices)
    coronal = explain_scan(path, run=run, axis="coronal")
    assert coronal.slice_axis["plane"] == "coronal" and len(coronal.slices) == 16
    assert coronal.edge_labels == ("S", "I", "R", "L")


def test_volume_rule_mean_vs_max_on_a_hand_case():
    from dualattn.pipelines.scan import volume_decision

    probs = np.array([[0.90, 0.10], [0.30, 0.70], [0.55, 0.45], [0.00, 1.00], [0.80, 0.20]])
    skipped = np.array([False, False, False, True, False])  # slice 3 is background: ignored
    vol, cls, k = volume_decision(probs, skipped=skipped, rule="max")
    assert (cls, k) == (1, 1) and vol.tolist() == [0.30, 0.70]
    vol, cls, k = volume_decision(probs, skipped=skipped, rule="mean")
    np.testing.assert_allclose(vol, [(0.90 + 0.30 + 0.55 + 0.80) / 4, (0.10 + 0.70 + 0.45 + 0.20) / 4])
    assert (cls, k) == (0, 0)  # healthy on average; the most healthy slice is drawn
    vol, cls, k = volume_decision(probs, skipped=skipped, rule="max", positive=0)
    assert (cls, k) == (0, 0)
    with pytest.raises(ValueError, match="unknown volume rule 'median'"):
        volume_decision(probs, rule="median")
    with pytest.raises(ValueError, match="every slice is skipped"):
        volume_decision(probs, skipped=np.ones(5, bool))


def test_volume_rule_mean_end_to_end(tmp_path, monkeypatch):
    from dualattn.pipelines.scan import explain_scan

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    _lesion_detector(monkeypatch, run)
    series = tmp_path / "series"
    _series(series)
    hi = explain_scan(series, run=run, volume_rule="max")
    mean = explain_scan(series, run=run, volume_rule="mean")
    kept = np.array([e["probabilities"] for e in mean.slices if "probabilities" in e])
    np.testing.assert_allclose(mean.probabilities, kept.mean(axis=0), atol=1e-6)
    assert mean.predicted_class == 0  # one lesion slice of five: healthy on average
    assert mean.deciding_slice == int(np.argmax([e["probabilities"][0] if "probabilities" in e else -1
                                                 for e in mean.slices]))
    assert hi.predicted_class == 1 and hi.deciding_slice == LESION
    assert mean.summary()["volume_rule"] == "mean"
    with pytest.raises(ValueError, match="unknown volume rule"):
        explain_scan(series, run=run, volume_rule="median")


def test_background_slices_rule_and_all_background_volume(tmp_path):
    from dualattn.pipelines.scan import background_slices, explain_scan

    v = np.zeros((1, 3, 3, 4), np.float32)
    v[0, :, :, 1] = 100.0
    v[0, 0, 0, 2] = 0.9  # within 1% of the range above the minimum: background
    v[0, 0, 0, 3] = 1.1  # above it: kept
    assert background_slices(v, 2).tolist() == [True, False, True, False]
    assert background_slices(v, 2, fraction=0.0).tolist() == [True, False, False, False]
    assert background_slices(np.full((1, 2, 2, 2), 7.0), 0).tolist() == [True, True]
    with pytest.raises(ValueError, match="background fraction"):
        background_slices(v, 2, fraction=1.5)
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.float32), np.eye(4)), str(tmp_path / "empty.nii"))
    with pytest.raises(ValueError, match="every one of the 3 slices"):
        explain_scan(tmp_path / "empty.nii", run=run)


def test_class_names_missing_fall_back_to_the_index_and_say_so(tmp_path):
    from dualattn.pipelines.scan import explain_scan, overlay_title

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    (run / "summary.json").write_text("{}", encoding="utf-8")
    result = explain_scan(small_png(tmp_path / "a.png"), run=run)
    assert result.class_name == str(result.predicted_class) and result.summary()["class_names"] is None
    assert any("no class names" in n for n in result.notes)
    assert f"class {result.predicted_class} (run has no class names)" in overlay_title(result)
    named = make_run(tmp_path / "runs2", variant="exact", size=16)
    res2 = explain_scan(small_png(tmp_path / "a.png"), run=named)
    assert overlay_title(res2).startswith(["healthy", "lesion"][res2.predicted_class] + " p=")
    assert res2.overlay_slice is None and res2.orientation.startswith("drawn as stored")


def test_progress_bar_only_when_asked(tmp_path, capsys):
    from dualattn.pipelines.scan import explain_scan

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    vol = np.random.default_rng(2).uniform(1, 2, size=(16, 16, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii"))
    explain_scan(tmp_path / "v.nii", run=run)
    assert capsys.readouterr().err == ""
    explain_scan(tmp_path / "v.nii", run=run, progress=True)
    assert "slices" in capsys.readouterr().err


def test_block_parser_shared_by_explain_and_evaluate(tmp_path):
    import typer

    from dualattn.cli._options import parse_block, parse_blocks

    assert parse_blocks("3,4") == ["block3", "block4"] == parse_blocks(" block3 , block4 ")
    assert parse_block("3") == "block3" == parse_block("block3") == parse_block("block03")
    for bad in ("", "x", "3,4", "block", "b3"):
        with pytest.raises(typer.BadParameter):
            parse_block(bad)
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    scan = small_png(tmp_path / "a.png")
    res = _run_cli(["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "--block", "4",
                    "--name", "b"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "b.prediction.json").read_text())["block"] == "block4"
    bad = _run_cli(["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o2"), "--block", "three"])
    assert bad.exit_code == 2 and "--block 'three'" in bad.output
    assert not (tmp_path / "o2").exists()


def test_explain_help_lists_only_accepted_methods_and_aliases_work(tmp_path):
    import re

    from dualattn.cli._explain import HELP_METHODS
    from dualattn.cli._options import method_help_names
    from dualattn.explain import METHOD_ALIASES, get_method

    res = _run_cli(["explain", "--help"])
    assert res.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", res.output))
    named = re.findall(r"`([a-z_]+)`", text)
    assert "ig" in named and set(HELP_METHODS) <= set(named) | {"tau_l"}
    for m in named:
        get_method(m)  # every method the help names is known to the registry ...
    assert "ig (= integrated_gradients)" in method_help_names()
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    scan = small_png(tmp_path / "a.png")
    res = _run_cli(["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "--method", "ig",
                    "--name", "ig"])  # ... and the CLI accepts the aliases
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "ig.prediction.json").read_text())["method"] == METHOD_ALIASES["ig"]


def test_axis_is_checked_before_the_model_runs(tmp_path):
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 3), np.float32), np.eye(4)), str(tmp_path / "v.nii"))
    res = _run_cli(["explain", str(tmp_path / "v.nii"), "--run", str(run), "--out", str(tmp_path / "o"),
                    "--axis", "oblique"])
    assert res.exit_code == 2 and "axis 'oblique'" in res.output
    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((1, 3, 16, 16)).astype(np.float32))
    from dualattn.pipelines.scan import explain_scan

    with pytest.raises(ValueError, match="known orientation"):
        explain_scan(tmp_path / "v.npy", run=run, axis="axial")
    res = explain_scan(tmp_path / "v.npy", run=run)  # NPY: slices along the first axis, drawn as stored
    assert len(res.slices) == 3 and res.slice_axis["plane"] is None and res.edge_labels is None


# --------------------------------------------------------------------------- explain at the edges


def test_target_is_checked_against_the_classes_by_index_or_name(tmp_path):
    from dualattn.pipelines.scan import explain_scan

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    scan = small_png(tmp_path / "a.png")
    res = _run_cli(["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "--target", "5"])
    assert res.exit_code == 2
    assert "--target 5: the run's classes are 0 ('healthy'), 1 ('lesion'): give an index 0-1 or a class name" in res.output
    assert not (tmp_path / "o").exists()
    res = _run_cli(["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "--target", "tumour"])
    assert res.exit_code == 2 and "'tumour' is no class of this run" in res.output
    # by name (any case); an attention map is the same for every class: a note says so, the map is unchanged
    named = explain_scan(scan, run=run, target="Lesion")
    plain = explain_scan(scan, run=run)
    assert named.target == 1 and plain.target is None
    np.testing.assert_array_equal(named.heatmap, plain.heatmap)
    assert any("gives the same map for every class" in n for n in named.notes)
    # a post-hoc map does depend on the class: no such note, and the JSON records the target
    post = explain_scan(scan, run=run, method="gradcam", target=0)
    assert post.target == 0 and not any("same map for every class" in n for n in post.notes)
    assert post.summary()["target"] == 0


def test_attention_on_a_baseline_run_says_what_to_use(tmp_path):
    run = make_run(tmp_path / "runs", variant="baseline", size=16)
    scan = small_png(tmp_path / "a.png")
    for method in ("attention", "exact", "cvx"):
        res = _run_cli(["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "-m", method])
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert "has no attention gates" in text and "--method gradcam, lrp or ig" in text, text
        assert "gated variant" in text
    gated = make_run(tmp_path / "runs", variant="unconstrained", size=16)
    res = _run_cli(["explain", str(scan), "--run", str(gated), "--out", str(tmp_path / "o"), "-m", "exact"])
    assert res.exit_code == 2 and "use --method unconstrained" in " ".join(res.output.split())
    res = _run_cli(["explain", str(scan), "--run", str(gated), "--out", str(tmp_path / "o"), "--block", "5"])
    assert res.exit_code == 2 and "attention maps are at block(s) 3, 4" in " ".join(res.output.split())


def test_grayscale_saved_as_rgb_is_read_as_grayscale_with_a_note(tmp_path):
    from PIL import Image

    from dualattn.pipelines.scan import explain_scan

    run4 = make_run(tmp_path / "runs", variant="exact", size=16, in_channels=4, name="four")
    grey = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    res = explain_scan(tmp_path / "grey_rgb.png", run=run4)
    assert res.scan.shape == (1, 16, 16)
    assert any("3 channels are equal (a grayscale image saved as RGB)" in n for n in res.notes)
    colour = np.stack([grey, grey // 2, 255 - grey], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    out = _run_cli(["explain", str(tmp_path / "colour.png"), "--run", str(run4), "--out", str(tmp_path / "o")])
    assert out.exit_code == 2
    assert "the scan has 3 channels but the run's model takes 4: give a scan with 4 channels" in " ".join(out.output.split())
    # a model that takes 3 channels gets them as they are, without a note
    run3 = make_run(tmp_path / "runs", variant="exact", size=16, in_channels=3, name="three")
    same = explain_scan(tmp_path / "grey_rgb.png", run=run3)
    assert same.scan.shape == (3, 16, 16) and not any("grayscale" in n for n in same.notes)


def test_terminal_summary_is_short_and_the_full_json_is_in_the_folder_or_on_request(tmp_path):
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    vol = np.random.default_rng(3).uniform(50, 100, size=(16, 16, 40)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), str(tmp_path / "v.nii.gz"))
    res = _run_cli(["explain", str(tmp_path / "v.nii.gz"), "--run", str(run), "--out", str(tmp_path / "o"),
                    "--name", "v"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) <= 14 and "{" not in res.stdout
    assert lines[0].startswith("class:      ") and "probability" in lines[0]
    assert any(line.startswith("deciding:   slice ") and "of 40 (axial)" in line for line in lines)
    assert any(line.startswith("sharpness:  ") for line in lines)
    assert "v.prediction.json" in res.stdout
    full = json.loads((tmp_path / "o" / "v.prediction.json").read_text())
    assert len(full["slices"]) == 40 and full["sharpness"] is not None
    res = _run_cli(["explain", str(tmp_path / "v.nii.gz"), "--run", str(run), "--out", str(tmp_path / "o2"),
                    "--name", "v", "--json"])
    assert res.exit_code == 0
    printed = json.loads(res.stdout[res.stdout.index("{"):])
    assert printed["slices"] == full["slices"] and printed["files"]["prediction_json"].endswith("v.prediction.json")


def test_a_near_uniform_map_is_warned_about_in_the_terminal_json_and_figure(tmp_path, monkeypatch):
    import dualattn.pipelines.scan.run as scan_run

    def flat(model, x, *, method, block, target):  # a map the model spreads evenly
        return torch.full((x.shape[0], 1, 4, 4), 1 / 16)

    monkeypatch.setattr(scan_run, "explain", flat)
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    res = _run_cli(["explain", str(small_png(tmp_path / "a.png")), "--run", str(run), "--out", str(tmp_path / "o"),
                    "--name", "a"])
    assert res.exit_code == 0, res.output
    assert "sharpness:  1.00" in res.stdout
    assert "warning:    near-uniform map (sharpness 1.00 > 0.9): it singles out no region" in res.stdout
    pred = json.loads((tmp_path / "o" / "a.prediction.json").read_text())
    assert pred["sharpness"] == pytest.approx(1.0) and pred["warnings"] == [
        "near-uniform map (sharpness 1.00 > 0.9): it singles out no region"]


def test_a_single_dicom_image_with_orientation_tags_gets_its_letters(tmp_path):
    from dualattn.pipelines.scan import explain_scan, overlay_title

    run = make_run(tmp_path / "runs", variant="exact", size=16)
    px = np.random.default_rng(1).integers(100, 200, size=(16, 16)).astype(np.uint16)
    sagittal = dicom_slice(tmp_path / "sag.dcm", px, instance=12, modality="MR",
                           tags={"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]})
    res = explain_scan(sagittal, run=run)
    assert res.edge_labels == ("S", "I", "A", "P")
    assert "ImageOrientationPatient" in res.orientation and "records no patient orientation" not in res.orientation
    assert res.instance_number == 12 and "DICOM instance 12" in overlay_title(res)
    np.testing.assert_array_equal(res.overlay_image[0], px.astype(np.float32))  # drawn as stored
    axial = explain_scan(dicom_slice(tmp_path / "ax.dcm", px), run=run)  # the helper's default: axial
    assert axial.edge_labels == ("A", "P", "R", "L")


def test_errors_say_what_to_do(tmp_path):
    run = make_run(tmp_path / "runs", variant="exact", size=16)
    run3d = make_run(tmp_path / "runs", variant="exact", size=16, spatial_dims=3)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 3), np.float32), np.eye(4)), str(tmp_path / "empty.nii"))
    cases = {
        (str(tmp_path / "missing.png"), str(run)): "give an image or volume file, or a DICOM series folder",
        (str(small_png(tmp_path / "a.png")), str(tmp_path / "nope")): "give a folder written by `dualattn train`",
        (str(small_png(tmp_path / "b.png")), str(run3d)): "give a 3-D scan, or use a run trained on 2-D images",
        (str(tmp_path / "empty.nii"), str(run)): "lower the threshold (--background 0",
    }
    for (scan, r), advice in cases.items():
        res = _run_cli(["explain", scan, "--run", r, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, res.output
        assert advice in " ".join(res.output.split()), res.output
