"""Report: best-per-column marking, figures, self-containment, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from dualattn.report import best_per_column, cell_value, paper_ordering_notes, render_report, write_report
from dualattn.report import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def mock_results(seed: int = 0, *, best_seg: str = "exact") -> dict:
    """A results dict shaped like the demo's results.json."""
    rng = np.random.default_rng(seed)
    methods = ["gradcam", "ixg", "deeplift", "lrp", "ig", "tau_k", "dual", "exact"]
    cols = ["iou@97.5", "iou@95", "iou@90", "ap"]
    seg_rows = {m: {c: {"mean": float(rng.uniform(10, 50)), "std": float(rng.uniform(0, 3))} for c in cols}
                for m in methods}
    for c in cols:
        seg_rows[best_seg][c]["mean"] = 90.0
    fr = np.linspace(0, 1, 6)
    curves = {m: {"fractions": fr.tolist(), "mean": (1 - 0.4 * fr).tolist(), "std": [0.01] * 6} for m in methods}
    return {
        "meta": {"dataset": "synthetic-brain", "model": "unet_encoder", "seeds": [0, 1],
                 "versions": {"dualattn": "0.1.0"}, "wall_time_s": 42.0},
        "segmentation": {"columns": cols, "rows": seg_rows},
        "perturbation": {"columns": ["auc"], "rows": {m: {"auc": {"mean": 60.0 + k, "std": 1.0}}
                                                      for k, m in enumerate(methods)},
                         "curves": curves},
        "classification": {"columns": ["params", "balanced_accuracy"],
                           "rows": {"baseline": {"params": 1_200_000, "balanced_accuracy": {"mean": 91.0, "std": 1}},
                                    "exact": {"params": 1_230_000, "balanced_accuracy": {"mean": 92.0, "std": 1}}}},
    }


def mock_examples(n: int = 2, size: int = 32) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        mask = np.zeros((1, size, size), np.float32)
        mask[0, 8:20, 10:22] = 1
        out.append({"id": f"case{i}", "image": rng.random((1, size, size)).astype(np.float32), "mask": mask,
                    "label": 1, "pred": 1,
                    "maps": {m: rng.random((size // 4, size // 4)) for m in ("gradcam", "ig", "exact")}})
    return out


# ----------------------------------------------------------------------------- table logic


@pytest.mark.parametrize(
    "cell, expected",
    [({"mean": 61.5, "std": 2.0}, (61.5, 2.0)), (3, (3.0, None)), ({"mean": 1.0, "std": float("nan")}, (1.0, None)),
     ({"value": 2}, (2.0, None))],
)
def test_cell_value(cell, expected):
    assert cell_value(cell) == expected


def test_cell_value_missing_is_nan():
    mean, std = cell_value(None)
    assert math.isnan(mean) and std is None


def test_best_per_column_hand_computed():
    rows = {
        "a": {"iou": 1.0, "loss": 0.5, "params": 10, "ap": {"mean": 3.0, "std": 9.0}},
        "b": {"iou": 2.0, "loss": 0.2, "params": 5, "ap": {"mean": 3.0, "std": 0.0}},
        "c": {"iou": float("nan"), "loss": 0.9, "params": 1, "ap": None},
    }
    best = best_per_column(rows, ["iou", "loss", "params", "ap"])
    # ap: a and b tie and c has no value: every finite row ties, so nothing stands out
    assert best == {"iou": {"b"}, "loss": {"b"}, "params": set(), "ap": set()}
    rows["c"]["ap"] = 1.0  # now a and b share the best value: a shared best singles nothing out either
    assert best_per_column(rows, ["ap"]) == {"ap": set()}
    assert best_per_column({"only": {"x": 1.0}}, ["x"]) == {"x": {"only"}}
    # explicit direction overrides the name-based default
    assert best_per_column(rows, ["iou"], higher_is_better={"iou": False}) == {"iou": {"a"}}
    assert best_per_column(rows, ["iou"], higher_is_better={"iou": None}) == {"iou": set()}


class _CellCollector(HTMLParser):
    """Collect (row label, column index, text, is_best) for every table body cell."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[int, str, int, str, bool]] = []
        self.imgs: list[str] = []
        self.table = -1
        self._row: list[tuple[str, bool]] | None = None
        self._in_td = False
        self._best = False
        self._text = ""
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table += 1
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._in_td, self._best, self._text = True, "best" in (a.get("class") or ""), ""
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        if tag in ("link", "iframe") or (tag in ("img", "script") and not (a.get("src") or "data:").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append((self._text.strip(), self._best))
            self._in_td = False
        elif tag == "tr" and self._row:
            label = self._row[0][0]
            for j, (text, best) in enumerate(self._row[1:]):
                self.cells.append((self.table, label, j, text, best))
            self._row = None

    def handle_data(self, data):
        if self._in_td:
            self._text += data


def test_pivot_blocks_hand_case():
    from dualattn.report.html import pivot_blocks

    sec = {"columns": ["ap", "iou"], "higher_is_better": {"ap": True, "iou": True},
           "rows": {"a [block3]": {"ap": 1, "iou": 2}, "a [block4]": {"ap": 3, "iou": 4},
                    "b [block4]": {"ap": 5, "iou": 6}}}
    out = pivot_blocks(sec)
    assert out["columns"] == ["ap [block3]", "iou [block3]", "ap [block4]", "iou [block4]"]
    assert out["rows"] == {"a": {"ap [block3]": 1, "iou [block3]": 2, "ap [block4]": 3, "iou [block4]": 4},
                           "b": {"ap [block4]": 5, "iou [block4]": 6}}  # no block3 map: cells print "—"
    assert out["groups"] == [("block3", 2), ("block4", 2)]
    assert pivot_blocks(sec, max_columns=3) is None
    assert pivot_blocks({"columns": ["ap"], "rows": {"a": {"ap": 1}}}) is None
    assert pivot_blocks({"columns": ["ap"], "rows": {"a [block3]": {"ap": 1}}}) is None  # one block
    page = render_report({"segmentation": sec})
    assert page.count('class="group"') == 2 and "b [block4]" not in page


def test_render_marks_best_and_is_self_contained():
    results = mock_results()
    page = render_report(results, examples=mock_examples())
    parser = _CellCollector()
    parser.feed(page)
    assert parser.external == [] and parser.scripts == 0
    assert "http://" not in page and "https://" not in page
    # table 0 = segmentation: exact is best in every column and only exact is marked
    seg = [c for c in parser.cells if c[0] == 0]
    assert {c[1] for c in seg if c[4]} == {"exact"}
    assert len([c for c in seg if c[4]]) == 4
    assert all(c[3].startswith("90.0") for c in seg if c[4])
    # table 1 = perturbation: the last method (exact, 60 + 7) is best
    pert = [c for c in parser.cells if c[0] == 1]
    assert [c[1] for c in pert if c[4]] == ["exact"] and pert[-1][3].startswith("67.0")
    # table 2 = classification: params never ranked, exact best in balanced accuracy; 1.2 M formatted
    cls = [c for c in parser.cells if c[0] == 2]
    assert [(c[1], c[2]) for c in cls if c[4]] == [("exact", 1)]
    assert cls[0][3] == "1.20 M"
    # every image is an embedded, decodable PNG
    assert len(parser.imgs) >= 2
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        assert _decode_png(png).std() > 1.0
    # the run description is shown
    for text in ("synthetic-brain", "unet_encoder", "dualattn 0.1.0", "42 s"):
        assert text in page


def test_render_rejects_non_mapping():
    with pytest.raises(ValueError, match="mapping"):
        render_report([1, 2, 3])  # type: ignore[arg-type]


def test_render_handles_nan_and_missing_sections():
    page = render_report({"segmentation": {"rows": {"a": {"iou": float("nan")}, "b": {"iou": None}}}})
    assert "—" in page and 'class="best"' not in page


def _comparison(**kw) -> dict:
    rec = {"metric": "ap", "block": "block3", "ours": "exact", "ours_value": 60.0, "best_other": "deeplift",
           "other_value": 50.0, "ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3, "p_value": 0.002, "holds": True,
           "difference": 10.0, "diff_ci_low": 5.0, "diff_ci_high": 15.0, "direction": "higher", "claim_blocked": None}
    rec.update(kw)
    return rec


def test_paper_ordering_notes_come_from_comparisons_only():
    # the tables alone never make a claim, whatever they show
    assert paper_ordering_notes(mock_results(best_seg="exact")) == []
    holds = paper_ordering_notes({"comparisons": [_comparison()]})
    assert holds == [(True, "AP ×100 at block3: exact 60.0 vs deeplift 50.0, ratio 1.20 (95 % CI 1.10–1.30), "
                            "p = 0.002. Holds: the interval excludes 1 in favour of exact.")]
    # an interval that includes 1: no claim although ours is ahead
    (ok, text), = paper_ordering_notes({"comparisons": [_comparison(ci_low=0.95, holds=False)]})
    assert ok is False and "interval includes 1" in text
    # the other side ahead
    (ok, text), = paper_ordering_notes({"comparisons": [_comparison(ours_value=40.0, ratio=0.8, ci_low=0.7,
                                                                    ci_high=0.9, holds=False)]})
    assert ok is False and "deeplift scores better" in text
    # lower is better: a ratio below 1 favours ours
    (ok, text), = paper_ordering_notes({"comparisons": [_comparison(metric="auc_most_first@road", ours_value=40.0,
                                                                    ratio=0.8, ci_low=0.7, ci_high=0.9,
                                                                    direction="lower", holds=False)]})
    assert ok is False and "interval includes 1" in text
    # blocked claims say why, even when the interval would hold
    (ok, text), = paper_ordering_notes({"comparisons": [_comparison(claim_blocked="only 8 positive images (< 30)",
                                                                    holds=False)]})
    assert ok is False and "No claim: only 8 positive images" in text
    # SRG with an undefined ratio reports the difference interval
    (ok, text), = paper_ordering_notes({"comparisons": [_comparison(metric="srg@road", ratio=None, ci_low=None,
                                                                    ci_high=None)]})
    assert ok is True and "difference +10.0 (95 % CI +5.0 to +15.0)" in text
    page = render_report({**mock_results(), "comparisons": [_comparison(holds=False, ci_low=0.9)],
                          "warnings": ["exact [block3]: the attention map is nearly uniform"]})
    assert "Does not hold, or no claim" in page and "nearly uniform" in page


def _primary(**kw) -> dict:
    rec = {"metric": "ap", "block": "block3", "protocol": "own_model", "ours": "dual", "ours_variant": "dual",
           "ours_value": 60.0, "other": "lrp", "best_other": "lrp", "other_variant": "dual", "other_value": 50.0,
           "kind": "ratio", "ratio": 1.2, "ci_low": 1.05, "ci_high": 1.37, "difference": 10.0, "diff_ci_low": 2.0,
           "diff_ci_high": 18.0, "null": 1.0, "direction": "higher", "p_value": 0.004, "p_adjusted": 0.02,
           "level": 0.9875, "holds": True, "primary": True, "claim_blocked": None}
    rec.update(kw)
    return rec


def test_primary_claims_are_worded_for_ratios_and_differences_and_blocked_ones_counted_once():
    from dualattn.report.claims import claim_sentence

    status, text = claim_sentence(_primary())
    assert status == "holds" and "dual 60.0 vs lrp of dual 50.0" in text and "scored on its own model" in text
    assert "Holm-adjusted 98.8 % interval 1.05 to 1.37" in text and text.endswith("lies above 1.")
    # a difference (SRG can be negative, so no ratio) is compared with 0, not with 1
    status, text = claim_sentence(_primary(metric="srg_prob@road", kind="difference", ratio=None, ci_low=None,
                                           ci_high=None, null=0.0, difference=-1.5, diff_ci_low=-4.0,
                                           diff_ci_high=1.0, holds=False))
    assert status == "does not hold" and "difference -1.5" in text and "lrp of dual scores better" in text
    status, text = claim_sentence(_primary(ci_low=0.95, holds=False))
    assert status == "does not hold" and "the interval reaches 1" in text
    blocked = [_primary(claim_blocked="only 8 positive images (< 30)", holds=False, block=b)
               for b in ("block3", "block4")]
    page = render_report({**mock_results(), "comparisons": [_primary(), *blocked],
                          "protocols": {"own_model": {"description": "every map on its own model"}}})
    assert page.count("No claim") == 1 and "for 2 of 3 primary claims" in page
    assert "scored on its own model" in page and "Holds" in page


def test_write_report_atomic(tmp_path):
    out = write_report(mock_results(), tmp_path / "sub" / "report.html")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp files left


# ----------------------------------------------------------------------------- figures


def test_resize_map_matches_torch_bilinear():
    import torch
    import torch.nn.functional as F

    a = np.random.default_rng(0).random((6, 5))
    for shape in ((24, 20), (13, 11), (6, 5)):
        ref = F.interpolate(torch.tensor(a)[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(figures.resize_map(a, shape), ref.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="dimensions differ"):
        figures.resize_map(a, (4, 4, 4))


@pytest.mark.parametrize("shape", [(8, 9), (1, 8, 9), (3, 8, 9), (1, 1, 8, 9)])
def test_as_2d_shapes(shape):
    arr = np.arange(np.prod(shape), dtype=float).reshape(shape)
    out = figures.as_2d(arr)
    assert out.shape == (8, 9)
    if shape[0] == 3:
        np.testing.assert_allclose(out, arr.mean(axis=0))


def test_as_2d_volume_picks_heaviest_slice():
    vol = np.zeros((7, 5, 5))
    vol[4, 2, 2] = 10.0
    out = figures.as_2d(vol)
    assert out[2, 2] == 10.0
    with pytest.raises(ValueError, match="2-D image"):
        figures.as_2d(np.zeros((2, 2, 2, 2, 2)))


def test_overlay_draws_contour_at_mask_border():
    size = 40
    image = np.zeros((size, size))
    mask = np.zeros((size, size))
    mask[10:30, 10:30] = 1
    png = figures.overlay_png(image, None, mask=mask, size_inches=2.0, dpi=100)
    rgb = _decode_png(png)
    cyanish = (rgb[..., 2] > 100) & (rgb[..., 0] < 80)  # the contour colour, antialiased over black
    ys, xs = np.nonzero(cyanish)
    assert ys.size > 200  # the contour is drawn (4 edges of a 20/40-wide square on a 210 px figure)
    h, w = rgb.shape[:2]
    # contour pixels lie on the square's border (10/40 .. 30/40 of the figure), not in its middle
    fy, fx = ys / h, xs / w
    assert fy.min() > 0.2 and fy.max() < 0.8 and fx.min() > 0.2 and fx.max() < 0.8
    centre = (np.abs(fy - 0.5) < 0.15) & (np.abs(fx - 0.5) < 0.15)
    assert not centre.any()
    # without a mask no cyan at all
    rgb2 = _decode_png(figures.overlay_png(image, None, size_inches=2.0, dpi=100))
    assert ((rgb2[..., 2] > 100) & (rgb2[..., 0] < 80)).sum() == 0


def test_overlay_heatmap_bright_where_map_is_high():
    image = np.zeros((32, 32))
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0  # top-left quadrant hot
    rgb = _decode_png(figures.overlay_png(image, heat, alpha=1.0, size_inches=2.0, dpi=100))
    h, w = rgb.shape[:2]
    assert rgb[: h // 8, : w // 8].mean() > rgb[-h // 4:, -w // 4:].mean() + 50
    with pytest.raises(ValueError, match="alpha"):
        figures.overlay_png(image, heat, alpha=1.5)


def test_example_grid_splits_wide_grids():
    ex = mock_examples(2)
    for e in ex:
        e["maps"] = {f"m{k}": np.random.rand(4, 4) for k in range(11)}
    pngs = figures.example_grid_png(ex, max_columns=8)
    assert len(pngs) == 2
    widths = [_decode_png(p).shape[1] for p in pngs]
    assert widths[0] > widths[1]  # 9 columns vs 4 columns
    assert figures.example_grid_png([]) == []
    with pytest.raises(ValueError, match="max_columns"):
        figures.example_grid_png(ex, max_columns=0)
    with pytest.raises(ValueError, match="no 'image'"):
        figures.example_grid_png([{"maps": {}}])


def test_curves_png_checks_lengths():
    png = figures.curves_png({"a": {"fractions": [0, 0.5, 1], "mean": [1, 0.8, 0.5], "auc": {"mean": 77.0}}})
    assert png.startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="2 fractions but 3 values"):
        figures.curves_png({"a": {"fractions": [0, 1], "mean": [1, 0.8, 0.5]}})


# ----------------------------------------------------------------------------- headless browser


def _chromium() -> str | None:
    """Find chromium; try to install Debian's package when missing (needs root and the network)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return shutil.which("chromium")


def render_in_chromium(html_path: Path, png_path: Path, user_data: Path, *, width: int = 1280,
                       height: int = 2000) -> tuple[list[str], np.ndarray]:
    """Screenshot ``html_path``; return (console messages, RGB pixels)."""
    exe = _chromium()
    if exe is None:
        pytest.skip("headless chromium is not installed and `apt-get install -y chromium` failed "
                    "(no root or no network); the report's browser check cannot run here")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={user_data}",
           "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}", f"--screenshot={png_path}",
           html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png_path.is_file(), f"chromium wrote no screenshot (rc={proc.returncode}): {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return console, _decode_png(png_path.read_bytes())


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    html_path = write_report(mock_results(), tmp_path / "report.html", examples=mock_examples(3))
    console, rgb = render_in_chromium(html_path, tmp_path / "shot.png", tmp_path / "profile")
    assert console == [], f"console errors: {console}"
    assert rgb.std() > 10.0, "screenshot is blank"
    # laptop width: the page's content fits in 1280 px; the right 10 % of the screenshot is page margin only
    right = rgb[:, int(rgb.shape[1] * 0.92):]
    assert right.std() < 8.0, "content overflows to the right edge (horizontal scrolling)"


@pytest.mark.browser
def test_console_capture_detects_errors(tmp_path):
    """The console check is live: a page with a script error is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body>x<script>undefinedFunction();</script></body></html>", encoding="utf-8")
    console, _ = render_in_chromium(bad, tmp_path / "bad.png", tmp_path / "profile", width=400, height=300)
    assert any(re.search("undefinedFunction", line) for line in console)


def _second_edition_results() -> dict:
    res = mock_results()
    res["meta"].update({"variants": ["baseline", "dual"], "n_images": 128, "n_patients": 64, "sealed": True,
                        "class_names": ["no_tumor", "tumor"]})
    res["comparisons"] = [
        _primary(), _primary(block="block4", holds=False, ci_low=0.9),
        _primary(metric="srg_prob@road", kind="difference", ratio=None, ci_low=None, ci_high=None, null=0.0,
                 difference=-4.0, diff_ci_low=-9.0, diff_ci_high=1.0, holds=False),
        {"metric": "balanced_accuracy", "ours": "dual", "other": "baseline", "ours_value": 90.0, "other_value": 91.0,
         "difference": -1.0, "diff_ci_low": -2.5, "diff_ci_high": 0.5, "null": -3.0, "noninferior": True,
         "primary": False, "claim_blocked": None},
    ]
    res["own_model"] = {"dual": {"methods": {"dual": {"blocks": {"block3": {
        "hidden_swap_flips@20": {"mean": 12.5}, "hidden_swap_flips_healthy@20": {"mean": 3.1},
        "kept_swap_flips@20": {"mean": 70.0}}}}}}}
    return res


def test_plain_summary_is_computed_from_the_results():
    from dualattn.report.summary import plain_summary

    text = " ".join(plain_summary(_second_edition_results()))
    assert "tested on 128 scans of 64 patients (the sealed test draw" in text
    assert "The baseline classifies 91.0 %" in text and "not to cost more than 3 points: dual" in text
    assert "1 of 2 claims hold" in text and "0 of 1 claims hold" in text
    assert "flips 12.5 % of its predictions (healthy scans patched the same way: 3.1 %)" in text
    assert "also uses what the map hides" in text
    # a number that is missing leaves its sentence out instead of guessing it
    bare = plain_summary({"meta": {}})
    assert bare == []


@pytest.mark.browser
def test_report_summary_and_glossary_are_there_in_a_real_browser(tmp_path):
    """Headless Chromium renders the report: the summary and the glossary are in the rendered DOM, near the top
    and at the end, and the page does not overflow."""
    from dualattn.report.summary import GLOSSARY

    html_path = write_report(_second_edition_results(), tmp_path / "report.html", examples=mock_examples(2))
    console, rgb = render_in_chromium(html_path, tmp_path / "shot.png", tmp_path / "profile")
    assert console == [] and rgb.std() > 10.0
    assert rgb[:, int(rgb.shape[1] * 0.92):].std() < 8.0
    exe = _chromium()
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", html_path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert '<section id="summary">' in dom and '<section id="glossary">' in dom
    assert dom.index('id="summary"') < dom.index("What was run") < dom.index('id="glossary"')
    assert all(term in dom for term in ("hiding test", "ROAD", "SRG", "LeRF / MoRF"))
    assert dom.count("<dt>") >= len(GLOSSARY)
