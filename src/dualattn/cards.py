"""Model cards: what a trained run is for, what it was trained on, which maps it offers and what each is
guaranteed (by a test) or measured (by an evaluation, with its protocol) to do, its known failure modes, and how
to reproduce it. Markdown, generated, never typed.

Training writes ``MODEL_CARD.md`` into every run folder (:func:`write_model_card` without measurements); the demo
rewrites it after its evaluation with the measured numbers (``results.json``), and the report shows the cards of
the variants it evaluated.

Example:
    >>> card = model_card({"variant": "exact", "model": "unet_encoder", "seed": 0, "dataset": "my_scans",
    ...                    "class_names": ["normal", "tumor"], "num_train": 10, "num_val": 2, "num_test": 3,
    ...                    "val_balanced_accuracy": 0.9, "parameters": 1000, "epochs": 3})
    >>> card.splitlines()[0]
    '# Model card: exact (unet_encoder), seed 0'
    >>> "not a diagnostic device" in card
    True
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["GUARANTEES", "model_card", "measured_for", "write_model_card", "CARD_NAME"]

CARD_NAME = "MODEL_CARD.md"

#: variant -> (its maps, what a test proves about them, what is NOT guaranteed and only measured)
GUARANTEES: dict[str, tuple[str, str, str]] = {
    "baseline": ("no map of its own; post-hoc maps (GradCAM, Integrated Gradients, LRP, DeepLIFT, ...)",
                 "post-hoc maps explain this model; LRP conserves relevance (tests/test_explain_lrp.py)",
                 "that the model uses only what a post-hoc map shows"),
    "unconstrained": ("its two gates' maps tau at block3 and block4",
                      "the features are multiplied by the maps (tests/test_models.py)",
                      "consistency between the two maps; that the model uses only what they show"),
    "dual": ("the witness-reparameterized maps mu at block3 and block4 (the paper's method)",
             "the maps are the reparameterization of Theorem 3.1 (tests/test_consistency.py); the features are "
             "weighted by them",
             "exact consistency (a penalty pushes towards it); that the model uses only what the maps show"),
    "exact": ("the exactly consistent maps mu at block3 and block4",
              "the maps solve the consistency problem in closed form (checked against a conic solver to 1e-6, "
              "tests/test_consistency.py)",
              "that the model uses only what the maps show (its features see far beyond a cell)"),
    "multilevel": ("exactly consistent maps at block2, block3 and block4",
                   "exact consistency over the three levels (checked against a conic solver)",
                   "that the model uses only what the maps show"),
    "additive": ("where it looks (mu) and what each place contributed (mu * s)",
                 "mu * s sums exactly to the logit less its bias; a pixel changes the evidence only in the cells "
                 "whose receptive field (computed, 16 px at block3) covers it (tests/test_models_local.py)",
                 "that the model cannot get around what the map hides: a softmax keeps every cell in the sum"),
    "select_predict": ("the hard consistent mask and the selector's map mu ranked inside it",
                       "with its mask held fixed, the prediction is bit-identical whatever the hidden pixels hold "
                       "(tests/test_select_predict.py, by hypothesis, through the deployed preprocessing)",
                       "that the mask itself stays put when hidden pixels change (the selector reads the whole "
                       "scan): measured by the hiding test with the mask recomputed"),
    # the threshold form (model option mask_rule="threshold"): the card of such a run states this instead
    "select_predict/threshold": (
        "the hard consistent mask (every cell whose own potential passes the calibrated threshold) and the "
        "selector's map mu ranked inside it",
        "with its mask held fixed, the prediction is bit-identical whatever the hidden pixels hold; every cell is "
        "judged on its own pixels, so a scan whose hidden cells are replaced shows the union of both scans' own "
        "masks, and the prediction cannot change unless a replacing cell passes the threshold itself "
        "(tests/test_select_predict_threshold.py)",
        "that findings are found: a cell sees only its own pixels, and a scan that shows no cell is called "
        "'no finding' (measured: accuracy, kept-swap flips)"),
}

_MEASURED = (
    ("balanced_accuracy", "balanced accuracy on the test split", None),
    ("ap", "lesion AP of its own map at block3", "block3"),
    ("srg_prob@road", "SRG on probabilities, ROAD fill, of its own map at block3 (own model)", "block3"),
    ("hidden_swap_flips@20", "hiding test: predictions that flip when all but the top 20 % of its block3 map is "
                             "swapped with a healthy scan (own model)", "block3"),
    ("hidden_swap_flips_healthy@20", "the same on healthy scans (the floor)", "block3"),
    ("kept_swap_flips@20", "lesion scans that flip when the kept 20 % is swapped instead", "block3"),
    ("sharpness", "sharpness exp(H)/N of its block3 map (1: flat)", "block3"),
)


def _fmt(stat: Any) -> str | None:
    if isinstance(stat, Mapping):
        m, s = stat.get("mean"), stat.get("std")
    else:
        m, s = stat, None
    try:
        m = float(m)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(m):
        return None
    return f"{m:.1f}" + (f" ± {float(s):.1f}" if isinstance(s, (int, float)) and math.isfinite(s) and s else "")


def measured_for(results: Mapping[str, Any], variant: str) -> list[tuple[str, str]]:
    """``(what, value)`` rows of a variant's measured numbers in ``results.json`` (own-model protocol where a
    classifier is involved; the variant's own map), leaving out what was not measured."""
    rows: list[tuple[str, str]] = []
    acc = (((results.get("classification") or {}).get("rows") or {}).get(variant) or {}).get("balanced_accuracy")
    own = (((results.get("own_model") or {}).get(variant) or {}).get("methods") or {})
    own_map = {"additive": "additive_contribution"}.get(variant, variant)
    cells = ((own.get(own_map) or {}).get("blocks") or {}).get("block3") or {}
    for key, what, block in _MEASURED:
        value = _fmt(acc) if key == "balanced_accuracy" else _fmt(cells.get(key)) if block else None
        if value is not None:
            rows.append((what, value))
    return rows


def model_card(summary: Mapping[str, Any], *, results: Mapping[str, Any] | None = None,
               command: str | None = None, warnings: list[str] | None = None) -> str:
    """A run's card from its ``summary.json`` (and, when evaluated, the evaluation's ``results.json``)."""
    variant = str(summary.get("variant", "baseline"))
    backbone = str(summary.get("model", "model"))
    seed = summary.get("seed")
    form = f"{variant}/{(summary.get('model_config') or {}).get('mask_rule')}"
    maps, proven, not_proven = GUARANTEES.get(form) or GUARANTEES.get(
        variant, ("its attention maps", "see docs/models.md", "see docs/models.md"))
    lines = [f"# Model card: {variant} ({backbone}), seed {seed}", ""]
    lines += ["## Intended use", "",
              "Research on classifiers that explain themselves and on how to evaluate explanations. It is not a "
              "diagnostic device, has not been validated on clinical data, and must not inform a patient's care.", ""]
    names = summary.get("class_names") or []
    lines += ["## Data", "",
              f"- dataset: `{summary.get('dataset')}`" + (f" (fingerprint of the labels "
              f"`{str(((summary.get('data') or {}).get('fingerprint') or {}).get('labels_sha256', ''))[:12]}`)"
              if (summary.get("data") or {}).get("fingerprint") else ""),
              f"- classes: {', '.join(map(str, names)) or 'not recorded'}",
              f"- images: {summary.get('num_train')} train / {summary.get('num_val')} val / {summary.get('num_test')} "
              "test, split by patient", ""]
    val = summary.get("val_balanced_accuracy")
    lines += ["## Model", "",
              f"- {backbone}, variant `{variant}`, {summary.get('parameters')} parameters",
              f"- trained {summary.get('epochs')} epochs; kept epoch {summary.get('best_epoch')} by "
              f"{summary.get('select_by', 'val_balanced_accuracy')}"
              + (f" (val balanced accuracy {100 * float(val):.1f})" if isinstance(val, (int, float)) else ""),
              f"- options: `{ {k: v for k, v in (summary.get('model_config') or {}).items() if k not in ('name', 'variant')} }`",
              ""]
    lines += ["## Maps and what they mean", "",
              f"- maps: {maps}",
              f"- guaranteed (a test proves it): {proven}",
              f"- not guaranteed (measured below when evaluated): {not_proven}", ""]
    rows = measured_for(results, variant) if results else []
    if rows:
        meta = results.get("meta") or {}  # type: ignore[union-attr]
        lines += ["## Measured", "",
                  f"On {meta.get('n_images', '?')} test scans of {meta.get('n_patients', '?')} patients"
                  + (" (the sealed draw)" if meta.get("sealed") else "")
                  + f", mean ± std over the seeds {meta.get('seeds', '?')}; each map on its own model:", ""]
        lines += [f"- {what}: {value}" for what, value in rows]
        lines.append("")
    failures = list(warnings or [])
    if results:
        failures += [w for w in results.get("warnings") or [] if str(w).startswith(f"{variant} ")]
    lines += ["## Known failure modes", ""]
    lines += [f"- {w}" for w in failures] or ["- none measured yet (run `dualattn evaluate` on this run)"]
    lines += ["- a high hiding-test flip rate means the model also decides from what its map hides: do not read "
              "the map as the complete reason for a decision", ""]
    lines += ["## Reproduce", "", "```bash", command or f"dualattn train --config config.yaml --out <this folder>",
              "```", "", "(`config.yaml` in this folder holds every setting; seeds make the run reproducible on the "
              "same machine and library versions.)", ""]
    return "\n".join(lines)


def write_model_card(run_dir: Any, *, results: Mapping[str, Any] | None = None, command: str | None = None) -> Any:
    """Write ``MODEL_CARD.md`` into a run folder (atomically) from its ``summary.json``; returns the path."""
    from pathlib import Path

    from ._io import atomic_write_text
    from .runs import RunDir

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    path = Path(run.path) / CARD_NAME
    atomic_write_text(path, model_card(run.summary, results=results, command=command))
    return path
