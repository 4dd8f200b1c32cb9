"""evaluate_runs and the evaluate CLI on tiny saved runs, checked against independent recomputation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _dataset(root: Path, *, n: int = 12, size: int = 32, channels: int = 1) -> Path:
    """Bright square lesions (label 1, with mask) and lesion-free images (label 0), all in 'test'."""
    from dualattn.data import FolderWriter

    rng = np.random.default_rng(0)
    with FolderWriter(root, class_names=["healthy", "lesion"]) as w:
        for i in range(n):
            img = rng.normal(0, 1, (channels, size, size)).astype(np.float32)
            label = i % 2
            mask = np.zeros((size, size), np.uint8)
            if label:
                r, c = rng.integers(0, size - size // 4, 2)
                mask[r : r + size // 4, c : c + size // 4] = 1
                img[:, mask > 0] += 3.0
            w.add(f"case{i}", image=img, label=label, patient=f"p{i}", mask=mask if label else None, split="test")
    return root


def _run(root: Path, variant: str, seed: int, *, in_channels: int = 1, image_size: int = 32, dataset: str = "") -> Path:
    from dualattn.models import create_model
    from dualattn.weights import save_model

    torch.manual_seed(seed)
    kw = {"img_size": image_size} if variant == "dual" else {}
    model = create_model("unet_encoder", variant=variant, features=4, in_channels=in_channels, **kw)
    # non-trivial BatchNorm statistics so that the baseline's predictions differ between images
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.2)
    run = root / variant / f"seed{seed}"
    run.mkdir(parents=True)
    save_model(model, run / "best.safetensors")
    cfg = {"variant": variant, "seed": seed, "image_size": image_size, "model": "unet_encoder", "dataset": dataset,
           "split_seed": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    torch.set_num_threads(1)
    from dualattn.evaluate import EvalSettings, evaluate_runs

    tmp = tmp_path_factory.mktemp("eval")
    data = _dataset(tmp / "data")
    runs = tmp / "runs"
    for variant, seeds in (("baseline", (0, 1)), ("exact", (0, 1)), ("unconstrained", (0,))):
        for s in seeds:
            _run(runs, variant, s, dataset=str(data))
    path = evaluate_runs(runs, out=tmp / "out", settings=EvalSettings(data=data, methods=["exact", "cvx", "gradcam", "lrp", "random", "raw_channel_0", "tau_k"], perturbation_steps=4, sanity_images=2, batch_size=5))
    return tmp, data, runs, path, json.loads(path.read_text())


def test_results_layout_and_tables(evaluated):
    tmp, _, _, path, res = evaluated
    assert res["schema_version"] == 3
    assert any("tau_k" in n for n in res["notes"])  # no tau_k run: skipped with a note
    assert set(res["methods"]) == {"exact", "cvx", "gradcam", "lrp", "random", "raw_channel_0"}
    assert set(res["segmentation"]["rows"]) >= {"exact [block3]", "exact [block4]", "gradcam [block4]"}
    assert res["segmentation"]["higher_is_better"]["ap"] is True
    assert res["perturbation"]["higher_is_better"]["auc_most_first"] is False
    assert res["meta"]["n_images"] == 12 and res["meta"]["n_positive_with_mask"] == 6
    for stem in ("table1_perturbation", "table2_segmentation", "table3_classification", "table4_diagnostics",
                 "table5_hiding"):
        assert (path.parent / f"{stem}.md").is_file() and (path.parent / f"{stem}.csv").is_file()
    md = (path.parent / "table2_segmentation.md").read_text()
    assert "IoU@97.5 ×100 ↑" in md and "exact [block3]" in md
    csv_head = (path.parent / "table1_perturbation.csv").read_text().splitlines()[0]
    assert "auc_least_first [higher] mean" in csv_head and "auc_most_first [lower] std" in csv_head
    curves = res["curves"]["gradcam"]["block3"]
    assert curves["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(curves["least_first"]["runs"]) == 2 and len(curves["most_first"]["mean"]) == 5
    assert set(res["perturbation"]["curves"]) == set(res["methods"])


def _test_tensors(data):
    from dualattn.evaluate.testset import load_test_set

    return load_test_set(data, size=32)


def test_segmentation_numbers_match_direct_computation(evaluated):
    from sklearn.metrics import average_precision_score

    from dualattn.evaluate import metrics as M
    from dualattn.explain import explain
    from dualattn.weights import load_model

    _, data, runs, _, res = evaluated
    test = _test_tensors(data)
    pos = torch.nonzero(test.masks.flatten(1).sum(1) > 0).flatten()
    per_run_iou, per_run_ap = [], []
    for s in (0, 1):
        model = load_model(runs / "exact" / f"seed{s}" / "best.safetensors")
        maps = explain(model, test.images[pos], method="exact", block="block3")
        per_run_iou.append(100 * float(M.iou_at_quantile(maps, test.masks[pos], 0.9).mean()))
        up = M.resize_mass(maps.double(), (32, 32))
        per_run_ap.append(100 * float(np.mean([
            average_precision_score(test.masks[i].flatten().numpy(), up[k].flatten().numpy())
            for k, i in enumerate(pos.tolist())
        ])))
    cell = res["methods"]["exact"]["blocks"]["block3"]
    assert cell["iou@90"]["values"] == pytest.approx(per_run_iou)
    assert cell["iou@90"]["mean"] == pytest.approx(statistics.fmean(per_run_iou))
    assert cell["iou@90"]["std"] == pytest.approx(statistics.stdev(per_run_iou))
    assert cell["ap"]["values"] == pytest.approx(per_run_ap)
    # exact and cvx maps are consistent across blocks; GradCAM's are not
    assert res["methods"]["exact"]["consistency"]["consistency_kl"]["mean"] == pytest.approx(0, abs=1e-6)
    assert res["methods"]["cvx"]["consistency"]["consistency_kl"]["mean"] == pytest.approx(0, abs=1e-6)
    assert res["methods"]["gradcam"]["consistency"]["consistency_kl"]["mean"] > 1e-3


def test_perturbation_and_classification_match_direct_computation(evaluated):
    from sklearn.metrics import balanced_accuracy_score

    from dualattn.evaluate import perturbation_curve
    from dualattn.explain import explain
    from dualattn.models import count_parameters
    from dualattn.weights import load_model

    _, data, runs, _, res = evaluated
    test = _test_tensors(data)
    aucs = []
    for s in (0, 1):
        base = load_model(runs / "baseline" / f"seed{s}" / "best.safetensors")
        maps = explain(base, test.images, method="gradcam", block="block4", target=test.labels)
        curve = perturbation_curve(base, test.images, test.labels, maps, fractions=(0, 0.25, 0.5, 0.75, 1.0))
        aucs.append(curve.auc)
        got = res["curves"]["gradcam"]["block4"]["least_first"]["runs"][s]
        assert got == pytest.approx([100 * a for a in curve.balanced_accuracy])
    assert res["methods"]["gradcam"]["blocks"]["block4"]["auc_least_first"]["values"] == pytest.approx(aucs)
    # pixel methods: one attribution pooled to both grids gives what explain() gives per block
    from dualattn.evaluate import metrics as M

    base = load_model(runs / "baseline" / "seed1" / "best.safetensors")
    pos = torch.nonzero(test.masks.flatten(1).sum(1) > 0).flatten()
    for block in ("block3", "block4"):
        maps = explain(base, test.images[pos], method="lrp", block=block, target=test.labels[pos])
        iou = 100 * float(M.iou_at_quantile(maps, test.masks[pos], 0.95).mean())
        assert res["methods"]["lrp"]["blocks"][block]["iou@95"]["values"][1] == pytest.approx(iou, abs=1e-4)
    rows = {r["run"]: r for r in res["runs"]}
    for s in (0, 1):
        run = runs / "baseline" / f"seed{s}"
        model = load_model(run / "best.safetensors").eval()
        with torch.no_grad():
            pred = model(test.images).argmax(1)
        assert rows[str(run)]["balanced_accuracy"] == pytest.approx(
            100 * balanced_accuracy_score(test.labels.numpy(), pred.numpy()))
        assert rows[str(run)]["params"] == count_parameters(model)
    cls = res["classification"]["rows"]
    assert set(cls) == {"baseline", "exact", "unconstrained"}
    assert cls["exact"]["params"] > cls["baseline"]["params"]


def test_own_model_protocol_scores_every_map_on_its_own_model(evaluated):
    """own_model/<variant>/methods/<method>: post-hoc maps of every gated model, every map's curves on the model
    it comes from; the baseline's own-model numbers are the common classifier's."""
    from dualattn.evaluate import perturbation_curve
    from dualattn.explain import explain
    from dualattn.weights import load_model

    _, data, runs, _, res = evaluated
    assert set(res["protocols"]) == {"common_classifier", "own_model"}
    own = res["own_model"]
    assert set(own) == {"baseline", "exact", "unconstrained"}
    assert set(own["exact"]["methods"]) == {"exact", "gradcam", "lrp", "random", "raw_channel_0"}
    assert set(own["unconstrained"]["methods"]) >= {"cvx", "gradcam", "lrp"}
    test = _test_tensors(data)
    model = load_model(runs / "exact" / "seed1" / "best.safetensors")
    for method, target in (("exact", None), ("gradcam", test.labels)):
        maps = explain(model, test.images, method=method, block="block3", target=target)
        curve = perturbation_curve(model, test.images, test.labels, maps, fractions=(0, 0.25, 0.5, 0.75, 1.0))
        cell = own["exact"]["methods"][method]["blocks"]["block3"]
        assert cell["auc_least_first"]["values"][1] == pytest.approx(curve.auc)
    # the attention map itself is the same in both protocols: its segmentation numbers agree
    assert own["exact"]["methods"]["exact"]["blocks"]["block3"]["ap"]["values"] == pytest.approx(
        res["methods"]["exact"]["blocks"]["block3"]["ap"]["values"])
    # ... its perturbation numbers need not (another classifier)
    assert own["baseline"]["methods"]["gradcam"]["blocks"]["block4"]["auc_least_first"]["values"] == pytest.approx(
        res["methods"]["gradcam"]["blocks"]["block4"]["auc_least_first"]["values"])


def test_probability_curves_and_hiding_match_direct_computation(evaluated):
    from dualattn.evaluate.hiding import foreground, hiding_test, match_partners
    from dualattn.explain import explain
    from dualattn.weights import load_model

    _, data, runs, _, res = evaluated
    test = _test_tensors(data)
    base = load_model(runs / "baseline" / "seed0" / "best.safetensors").eval()
    maps = explain(base, test.images, method="gradcam", block="block4", target=test.labels)
    fr = (0.0, 0.25, 0.5, 0.75, 1.0)
    from dualattn.evaluate.perturbation import perturbation_outputs

    per_order = {}
    for order in ("least_first", "most_first"):
        logp = perturbation_outputs(base, test.images, maps, fractions=fr, order=order, fill="mean")
        p_true = logp.gather(2, test.labels.view(-1, 1, 1).expand(-1, len(fr), 1))[..., 0].double().exp()
        per_order[order] = np.trapezoid(p_true.numpy(), fr, axis=1) * 100.0
    cell = res["methods"]["gradcam"]["blocks"]["block4"]
    # (float32 outputs computed in batches of 5 there, all at once here)
    assert cell["auc_least_first_prob@mean"]["values"][0] == pytest.approx(per_order["least_first"].mean(), rel=1e-5)
    assert cell["srg_prob@mean"]["values"][0] == pytest.approx(
        (per_order["least_first"] - per_order["most_first"]).mean(), rel=1e-4, abs=1e-4)
    from dualattn.data.transforms import normalize

    # the swaps are made in the raw images, then the model's own preprocessing (a per-sample z-score) runs
    partners = match_partners(foreground(test.raw_images), test.labels, test.patients, n_partners=5)
    zscore = lambda b: torch.stack([normalize(img, method="zscore") for img in b])  # noqa: E731
    got = hiding_test(base, test.raw_images, maps, test.labels, partners=partners, ks=(10, 20, 35), preprocess=zscore)
    for key in ("hidden_swap_flips@20", "kept_swap_flips@35", "hidden_swap_dlogp@10"):
        assert cell[key]["values"][0] == pytest.approx(float(np.nanmean(got[key])))


def test_comparisons_carry_protocol_intervals_and_selection(evaluated):
    _, _, _, _, res = evaluated
    recs = res["comparisons"]
    assert recs, "secondary comparisons are made whatever the primary claims name"
    from dualattn.evaluate.claims import RECORD_KEYS

    for rec in recs:
        assert list(rec) == list(RECORD_KEYS)
        assert rec["protocol"] in ("common_classifier", "own_model")
        assert rec["resampled"] == ["patients", "seeds"] or rec["resampled"] == ["patients"]
    # the default primary claims name `dual`, which this evaluation has not: none is primary, none claims
    assert not any(r["primary"] for r in recs) and all(r["holds"] is None for r in recs)
    assert {r["ours"] for r in recs if r["metric"] != "balanced_accuracy"} == {"exact"}
    acc = [r for r in recs if r["metric"] == "balanced_accuracy"]
    assert {r["ours"] for r in acc} == {"exact", "unconstrained"} and all(r["null"] == -3.0 for r in acc)


def test_size_and_channel_adaptation(tmp_path):
    from dualattn.evaluate import EvalSettings, evaluate_runs

    data = _dataset(tmp_path / "data", n=6, size=40)
    run = _run(tmp_path / "runs", "baseline", 0, in_channels=3, image_size=32, dataset=str(data))
    path = evaluate_runs(run, out=tmp_path / "out", settings=EvalSettings(data=data, size=40, methods=["gradcam", "random"], perturbation_steps=2, sanity_images=0, blocks=("block3",)))
    res = json.loads(path.read_text())
    notes = " ".join(res["notes"])
    assert "repeated" in notes and "resized" in notes
    assert res["meta"]["image_size"] == [40, 40]
    assert math.isfinite(res["methods"]["gradcam"]["blocks"]["block3"]["iou@90"]["mean"])
    # the one channel rule (as `dualattn explain`): several channels averaged into a single-channel model ...
    data4 = _dataset(tmp_path / "data4", n=4, size=40, channels=4)
    one = _run(tmp_path / "runs1", "baseline", 0, in_channels=1, image_size=40, dataset=str(data))
    path = evaluate_runs(one, out=tmp_path / "out1", settings=EvalSettings(data=data4, methods=["random"], sanity_images=0))
    assert any("4 channels were averaged" in n for n in json.loads(path.read_text())["notes"])
    # ... and no mapping between two different multi-channel layouts
    three = _run(tmp_path / "runs3", "baseline", 0, in_channels=3, image_size=40, dataset=str(data))
    with pytest.raises(ValueError, match="4 channels but the model expects 3"):
        evaluate_runs(three, out=tmp_path / "out3", settings=EvalSettings(data=data4, methods=["random"]))


def test_cli(tmp_path, evaluated):
    from typer.testing import CliRunner

    from dualattn.cli import app

    _, data, runs, _, _ = evaluated
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "evaluate", "--runs", str(runs / "exact" / "seed0"), str(runs / "unconstrained"),
        "--baseline", str(runs / "baseline" / "seed0"), "--data", str(data), "--methods", "exact,cvx,random",
        "--blocks", "3,4", "--out", str(out), "--steps", "2", "--sanity-images", "0", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["exact"]["source"]["runs"] == [str(runs / "exact" / "seed0")]
    assert res["meta"]["baselines"] == [str(runs / "baseline" / "seed0")]
    assert "Table 2" in result.output
    bad = CliRunner().invoke(app, ["evaluate", "--runs", str(runs), "--out", str(out), "--blocks", "x"])
    assert bad.exit_code == 2


def test_vit_runs_are_evaluated_on_their_patch_grid(tmp_path):
    import yaml

    from dualattn.evaluate import EvalSettings, evaluate_runs
    from dualattn.models import create_model
    from dualattn.weights import save_model

    data = _dataset(tmp_path / "data", n=6, size=32)
    _run(tmp_path / "runs", "baseline", 0, dataset=str(data))
    torch.manual_seed(0)
    vit = create_model("vit_tiny", img_size=32, patch_size=8, num_layers=2, hidden_size=16, mlp_dim=16, num_heads=2)
    run = tmp_path / "runs" / "vit" / "seed0"
    run.mkdir(parents=True)
    save_model(vit, run / "best.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"variant": "baseline", "model": "vit_tiny", "image_size": 32, "seed": 0}))
    path = evaluate_runs(tmp_path / "runs", out=tmp_path / "out", settings=EvalSettings(data=data, methods=["vit_attention", "vit_rollout", "gradcam"], perturbation_steps=2, sanity_images=2))
    res = json.loads(path.read_text())
    assert set(res["methods"]["vit_rollout"]["blocks"]) == {"patches"}
    assert res["methods"]["gradcam"]["source"]["runs"] == [str(tmp_path / "runs" / "baseline" / "seed0")]
    assert res["meta"]["baselines"] == [str(tmp_path / "runs" / "baseline" / "seed0")]  # the ViT is no CNN baseline
    assert set(res["classification"]["rows"]) == {"unet_encoder:baseline", "vit_tiny:baseline"}


def test_evaluate_runs_3d(tmp_path):
    from dualattn.data import FolderWriter
    from dualattn.evaluate import EvalSettings, evaluate_runs
    from dualattn.models import create_model
    from dualattn.weights import save_model

    rng = np.random.default_rng(1)
    with FolderWriter(tmp_path / "data", class_names=["healthy", "lesion"]) as w:
        for i in range(6):
            img = rng.normal(0, 1, (1, 16, 16, 16)).astype(np.float32)
            mask = np.zeros((16, 16, 16), np.uint8)
            if i % 2:
                mask[4:9, 5:10, 6:11] = 1
                img[:, mask > 0] += 3
            w.add(f"v{i}", image=img, label=i % 2, patient=f"p{i}", mask=mask if i % 2 else None, split="test")
    for variant in ("baseline", "exact"):
        torch.manual_seed(0)
        model = create_model("unet_encoder", variant=variant, features=4, spatial_dims=3)
        run = tmp_path / "runs" / variant
        run.mkdir(parents=True)
        save_model(model, run / "best.safetensors")
        (run / "config.yaml").write_text(yaml.safe_dump({"variant": variant, "seed": 0, "image_size": 16}))
    path = evaluate_runs(tmp_path / "runs", out=tmp_path / "out", settings=EvalSettings(data=tmp_path / "data", methods=["exact", "gradcam", "lrp", "random"], perturbation_steps=2, sanity_images=2))
    res = json.loads(path.read_text())
    assert res["meta"]["image_size"] == [16, 16, 16] and res["meta"]["n_positive_with_mask"] == 3
    for method in ("exact", "gradcam", "lrp", "random"):
        for block in ("block3", "block4"):
            cell = res["methods"][method]["blocks"][block]
            assert all(math.isfinite(cell[c]["mean"]) for c in ("iou@90", "ap", "auc_least_first")), (method, block)
    assert res["methods"]["exact"]["consistency"]["consistency_kl"]["mean"] == pytest.approx(0, abs=1e-6)


def test_unknown_methods_and_blocks_are_refused_before_any_image_is_read(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dualattn.cli import app
    from dualattn.evaluate import EvalSettings, runner

    def no_reading(*a, **k):
        raise AssertionError("images were read before the settings were checked")

    monkeypatch.setattr(runner, "load_test_set", no_reading)
    run = _run(tmp_path / "runs", "baseline", 0, dataset=str(tmp_path / "data"))
    for bad, match in ((dict(methods=["gradcamm"]), "unknown method"), (dict(blocks=("block3", "x")), "unknown block")):
        with pytest.raises(ValueError, match=match):
            EvalSettings(**bad)
    res = CliRunner().invoke(app, ["evaluate", "--runs", str(run), "--out", str(tmp_path / "o"),
                                   "--methods", "gradcam,gradcamm"])
    assert res.exit_code == 2 and "gradcamm" in res.output


def test_plan_units_protocol_grid_by_hand():
    """Which (method, run) units each protocol asks for, and with which classifier roles."""
    from pathlib import Path as _P
    from types import SimpleNamespace

    from dualattn.evaluate.units import plan_units

    def run(variant, seed):
        model = SimpleNamespace(attention_blocks=("block3", "block4") if variant != "baseline" else ())
        return SimpleNamespace(variant=variant, is_vit=False, path=_P(f"runs/{variant}/seed{seed}"), model=model)

    base = [run("baseline", s) for s in (0, 1)]
    dual = [run("dual", s) for s in (0, 1)]
    exact = [run("exact", s) for s in (0, 1)]
    runs = base + dual + exact
    units, sources, own = plan_units(
        ["dual", "exact", "lrp", "prior", "raw_channel_0"], runs, base, ("block3", "block4"), [],
        own_model_methods=("lrp",), own_model_variants=("dual",), map_only=("raw_channel_",))
    got = {(u.method, str(u.run.path)): (sorted(u.classifiers), u.k, u.k_own) for u in units}
    # attention maps: both roles; the common classifier is baseline run k mod #baselines
    assert got[("dual", "runs/dual/seed1")] == (["baseline", "self"], 1, 1)
    assert {u.classifiers["baseline"].path for u in units if u.method == "exact"} == {b.path for b in base}
    # lrp: the baselines (one classifier plays both roles) and, under own_model, the named variant only
    assert got[("lrp", "runs/baseline/seed0")] == (["baseline", "self"], 0, 0)
    assert got[("lrp", "runs/dual/seed1")] == (["self"], None, 1)
    assert ("lrp", "runs/exact/seed0") not in got
    # prior is not named in own_model_methods: the common protocol only; raw channels: no classifier at all
    assert got[("prior", "runs/dual/seed0")] == (["baseline"], 0, None)
    assert got[("raw_channel_0", "runs/baseline/seed0")] == ([], 0, None)
    assert set(own) == {"baseline", "dual", "exact"} and set(own["dual"]) == {"dual", "lrp"}
    assert sources["lrp"]["variant"] == "baseline" and sources["prior"]["variant"] == "dual"
