"""The main job, end to end: data -> train every variant -> explain with every method -> both protocols
-> ``results.json`` + ``report.html``.

Presets are data (:class:`DemoPreset`): ``tiny`` (under a minute on a 2-core CPU; the tests run it),
``default`` (about ten minutes on a 2-core CPU) and ``full`` (the paper's protocol: 5 seeds, larger
images, longer training; for a GPU).

Output folder layout (``dualattn evaluate --runs DIR`` discovers the runs in it)::

    DIR/
      demo.json                 the preset and dataset used (a re-run must match them)
      data/                     the generated dataset (embedded names), folder format
      runs/<variant>/seed<k>/   one training run per variant and seed (config.yaml, best.safetensors, ...)
      eval/                     the evaluation's own outputs (results.json, tables)
      examples.npz              example scans, masks and every method's maps (for the figure grid)
      results.json              the evaluation results + ``meta`` (what was run, versions, wall time)
      report.html               the self-contained report
      .steps/<step>.json        done-markers: a re-run skips every step whose marker exists

Every file is written atomically, so an interrupted run leaves either a finished step or none; re-running
with the same ``DIR`` resumes at the first unfinished step (training runs that finished are not redone).

Example:
    >>> from dualattn.pipelines.demo import run_demo  # doctest: +SKIP
    >>> outcome = run_demo(preset="tiny", out="demo-out")  # doctest: +SKIP
    >>> outcome.report  # doctest: +SKIP
    PosixPath('demo-out/report.html')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .._checks import is_count
from .._env import versions
from .._io import atomic_write_json
from ..cards import model_card, write_model_card
from ..data import resolve_dataset
from ..data.sealed import SEALED_DATA_SEED
from ..data.transforms import AUGMENT_POLICIES, DEFAULT_AUGMENT_POLICY
from ..evaluate import EvalSettings, evaluate_runs
from ..evaluate.perturbation import FILLS
from ..explain import list_methods, method_sources
from ..models import CNN_VARIANTS, NORMS, list_variants
from ..report import write_report
from ..runs import RunDir
from ..train import TrainConfig, fit
from ..train.recipes import DEFAULT_RECIPES, DESIGN_RECIPES
from .examples import collect_examples, load_examples

logger = logging.getLogger(__name__)

__all__ = [
    "DemoPreset",
    "PRESETS",
    "get_preset",
    "DemoOutcome",
    "run_demo",
    "runs_by_variant",
    "train_run",
    "train_preset_runs",
    "method_sources",
    "load_examples",
    "DEMO_DATASETS",
]

#: Embedded dataset names the demo accepts besides a folder path.
DEMO_DATASETS: tuple[str, ...] = ("synthetic-brain", "synthetic-pet", "br35h", "synthetic-brain-3d")

#: The post-hoc explainers and controls the CPU presets also run on every gated variant (``own_model``): the
#: primary claims' comparators (:data:`dualattn.evaluate.claims.DEFAULT_CLAIMS`) and the hiding test's floors.
OWN_MODEL_DEFAULT: tuple[str, ...] = ("lrp", "random", "lesion_oracle")

#: The variants a demo trains: every CNN variant but the two KL ablations (the paper's Table 3 rows and ours).
ALL_VARIANTS: tuple[str, ...] = tuple(v for v in CNN_VARIANTS if v not in ("kl", "kl_reverse"))


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """Everything that sizes a demo run.

    Attributes:
        name: preset name.
        description: one line for the report.
        dataset: default dataset (embedded name or folder).
        n: images generated for an embedded dataset.
        image_size: side length the images are resized to.
        model: backbone (``dualattn.models.list_models()``).
        model_kwargs: backbone options, e.g. ``{"features": 16}``; ``norm`` (``batch``, ``group``,
            ``instance``: :data:`dualattn.models.NORMS`) is checked here and reaches every run's
            ``TrainConfig.model_kwargs``.
        variants: variants trained; ``multilevel`` is dropped when the backbone lacks it.
        seeds: training seeds (every number in the tables is a mean ± std over them).
        max_epochs: training epochs per run.
        batch_size: training batch size.
        lr: learning rate.
        augment: train-time augmentation (``TrainConfig.augment``: a random left-right flip and a small
            affine on the training split; see :func:`dualattn.data.transforms.augment`).
        augment_policy: which augmentation ``augment`` turns on (``TrainConfig.augment_policy``,
            :data:`dualattn.data.transforms.AUGMENT_POLICIES`; ``anatomy`` flips left-right only and adds small
            rotations, per-axis zooms and intensity changes). Absent from :meth:`to_dict` when it is the default,
            so demo folders written before the field existed still resume.
        methods: explanation methods evaluated (``None``: every method that applies).
        n_examples: example scans in the report's figure grid.
        perturbation_steps: fractions in the perturbation curve (``steps + 1`` points from 0 to 1).
        max_eval_images: cap on test images used by the protocols (``None``: all).
        ig_steps: integrated-gradients steps.
        sanity_images: images of the weight-randomization sanity check (0: skipped).
        references: also score the reference maps (each raw input channel, a random map).
        fills: perturbation fills scored (:data:`dualattn.evaluate.perturbation.FILLS`; the first one is the
            paper's protocol behind the un-suffixed keys); ``None``: every fill.
        accelerator: Lightning accelerator (``"cpu"`` for the CPU presets, ``"auto"`` for ``full``).
        data_seed: seed of the embedded dataset's draw: the sealed draw
            (:data:`dualattn.data.sealed.SEALED_DATA_SEED`), which no study has read.
        data_options: options of the embedded dataset's generator (e.g. ``{"slices_per_patient": 1}``: more
            patients with fewer slices each, so the test split holds enough patients for intervals that
            resample patients).
        split_fractions: train / val / test fractions of the patient-level split.
        own_model_methods: post-hoc explainers and controls that also explain gated variants under the
            ``own_model`` protocol (``"all"``: every one; the CPU presets run the primary claims' comparators and
            the floors, ``benchmarks/own_model_grid.py`` the whole grid).
        own_model_variants: the gated variants those run on (``"all"``; the CPU presets: the featured one).
        hiding_ks: kept shares (percent of the foreground cells) of the hiding test; ``()``: off.
        hiding_blocks: the blocks whose maps the hiding test runs on (``"all"``; the CPU presets: the finest).
        map_only_methods: methods scored without a classifier (the CPU presets: the raw-channel controls, which
            are there for implicit segmentation: "above every raw channel").
        hiding_fills: the hiding test's fills (``partner``: matched healthy test images; ``road``).
        precise_bn: ``TrainConfig.precise_bn`` of every run (BatchNorm statistics recomputed on this many
            un-augmented training images before each validation; 0: off). Absent from :meth:`to_dict` when 0.
        penalty_warmup_epochs: ``TrainConfig.penalty_warmup_epochs`` of every run (0: off). Absent from
            :meth:`to_dict` when 0.
    """

    name: str
    description: str
    dataset: str = "synthetic-brain"
    n: int = 400
    image_size: int = 64
    model: str = "unet_encoder"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"features": 16})
    variants: tuple[str, ...] = ALL_VARIANTS
    seeds: tuple[int, ...] = (0,)
    max_epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    augment: bool = True
    augment_policy: str = DEFAULT_AUGMENT_POLICY
    fills: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    n_examples: int = 4
    perturbation_steps: int = 10
    max_eval_images: int | None = None
    ig_steps: int = 32
    sanity_images: int = 8
    references: bool = True
    accelerator: str = "cpu"
    data_seed: int = SEALED_DATA_SEED
    data_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    own_model_methods: str | tuple[str, ...] = OWN_MODEL_DEFAULT
    own_model_variants: str | tuple[str, ...] = ("dual",)
    hiding_ks: tuple[int, ...] = (10, 20, 35)
    hiding_fills: tuple[str, ...] = ("partner",)
    hiding_blocks: str | tuple[str, ...] = ("block3",)
    map_only_methods: tuple[str, ...] = ("raw_channel_",)
    precise_bn: int = 0
    penalty_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        for key in ("n", "image_size", "max_epochs", "batch_size", "n_examples", "perturbation_steps", "ig_steps"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"preset {self.name!r}: {key}={getattr(self, key)!r} must be >= 1")
        if not self.seeds:
            raise ValueError(f"preset {self.name!r}: seeds must not be empty")
        if "baseline" not in self.variants:
            raise ValueError(f"preset {self.name!r}: variants {self.variants} must include 'baseline' "
                             "(post-hoc methods and the perturbation protocol use it)")
        if self.fills is not None:
            known = (*FILLS, "zero")
            if not self.fills or any(f not in known for f in self.fills) or len(set(self.fills)) != len(self.fills):
                raise ValueError(f"preset {self.name!r}: fills={self.fills!r} must be distinct names among "
                                 f"{', '.join(known)}")
        if self.augment_policy not in AUGMENT_POLICIES:
            raise ValueError(f"preset {self.name!r}: augment_policy={self.augment_policy!r} must be one of "
                             f"{', '.join(AUGMENT_POLICIES)}")
        if "norm" in self.model_kwargs and self.model_kwargs["norm"] not in NORMS:
            raise ValueError(f"preset {self.name!r}: model_kwargs norm={self.model_kwargs['norm']!r} must be one of "
                             f"{', '.join(NORMS)}")
        for key in ("precise_bn", "penalty_warmup_epochs"):
            if not is_count(getattr(self, key)):
                raise ValueError(f"preset {self.name!r}: {key}={getattr(self, key)!r} must be an int >= 0")
        if self.sanity_images < 0:
            raise ValueError(f"preset {self.name!r}: sanity_images={self.sanity_images!r} must be >= 0")
        fr = tuple(float(f) for f in self.split_fractions)
        if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0:
            raise ValueError(f"preset {self.name!r}: split_fractions={self.split_fractions!r} must be three "
                             "non-negative fractions (train, val, test) summing to 1")
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ValueError(f"preset {self.name!r}: max_eval_images={self.max_eval_images!r} must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form."""
        out = dataclasses.asdict(self)
        out["model_kwargs"] = dict(self.model_kwargs)
        out["variants"] = list(self.variants)
        out["seeds"] = list(self.seeds)
        out["methods"] = None if self.methods is None else list(self.methods)
        out["data_options"] = dict(self.data_options)
        out["split_fractions"] = list(self.split_fractions)
        out["own_model_methods"] = self.own_model_methods if isinstance(self.own_model_methods, str) \
            else list(self.own_model_methods)
        out["hiding_ks"] = list(self.hiding_ks)
        out["hiding_fills"] = list(self.hiding_fills)
        out["map_only_methods"] = list(self.map_only_methods)
        for key in ("own_model_variants", "hiding_blocks"):
            v = getattr(self, key)
            out[key] = v if isinstance(v, str) else list(v)
        if self.fills is None:  # absent, so that demo folders written before the field existed still resume
            out.pop("fills")
        else:
            out["fills"] = list(self.fills)
        if self.augment_policy == DEFAULT_AUGMENT_POLICY:  # likewise
            out.pop("augment_policy")
        if self.precise_bn == 0:  # likewise
            out.pop("precise_bn")
        if self.penalty_warmup_epochs == 0:  # likewise
            out.pop("penalty_warmup_epochs")
        return out


PRESETS: dict[str, DemoPreset] = {
    "tiny": DemoPreset(
        name="tiny",
        description="smoke test: 32x32 images, 64 scans, 1 epoch, 4 base features (under a minute on 2 CPU cores)",
        n=64, image_size=32, model_kwargs={"features": 4}, max_epochs=1, batch_size=8,
        n_examples=2, perturbation_steps=2, max_eval_images=8, ig_steps=4, sanity_images=2, references=False,
        data_options={"slices_per_patient": 1}, own_model_methods=("lrp",), hiding_ks=(20,),
    ),
    "default": DemoPreset(
        name="default",
        description="64x64 images, 640 scans, 3 seeds, 10 epochs, U-Net encoder with 8 base features, the "
                    "variants the claims compare (the single-gate ablations tau_k / tau_l are in 'full'); the sealed "
                    "draw, one slice per patient: 128 test scans of 64 patients; every method and control under the "
                    "mean and ROAD fills, both protocols (own_model: the featured dual with its claims' comparators), "
                    "the hiding test at block3 (wall time: docs/demo.md)",
        n=640, image_size=64, model_kwargs={"features": 8}, max_epochs=10, batch_size=16, seeds=(0, 1, 2),
        variants=("baseline", "unconstrained", "dual", "exact", "multilevel"),
        n_examples=4, perturbation_steps=4, max_eval_images=None, ig_steps=16,
        data_options={"slices_per_patient": 1}, split_fractions=(0.7, 0.1, 0.2), fills=("mean", "road"),
    ),
    "full": DemoPreset(
        name="full",
        description="the paper's protocol: 5 seeds, 128x128 images, 30 epochs, 32 base features (for a GPU)",
        n=2000, image_size=128, model_kwargs={"features": 32}, max_epochs=30, batch_size=32,
        seeds=(0, 1, 2, 3, 4), n_examples=6, perturbation_steps=20, max_eval_images=None, accelerator="auto",
        data_options={"slices_per_patient": 1}, split_fractions=(0.7, 0.1, 0.2), own_model_methods="all",
        own_model_variants="all", hiding_blocks="all", map_only_methods=(),
    ),
    "tiny3d": DemoPreset(
        name="tiny3d",
        description="3-D smoke test: synthetic-brain-3d, 24 volumes of 16^3, 1 epoch, 2 base features, "
                    "the variants the claims compare (within a minute on 2 CPU cores)",
        dataset="synthetic-brain-3d", n=24, image_size=16, model_kwargs={"features": 2}, max_epochs=1,
        batch_size=4, variants=("baseline", "unconstrained", "dual", "exact", "multilevel"),
        n_examples=1, perturbation_steps=2, max_eval_images=4, ig_steps=4, sanity_images=2, references=False,
    ),
    "3d": DemoPreset(
        name="3d",
        description="3-D: synthetic-brain-3d, 320 volumes of 32^3 (5.5 mm voxels), 3 seeds, 8 epochs, U-Net "
                    "encoder with 8 base features, BatchNorm with its statistics recomputed on 64 training volumes "
                    "before every validation (precise_bn), left-right flip and small affine (the candidate "
                    "benchmarks/learnability_3d.py chose on val), the variants the claims compare; every method "
                    "and control under the mean and ROAD fills on 16 test volumes, the hiding test at k = 20 only "
                    "(wall time: docs/demo.md)",
        dataset="synthetic-brain-3d", n=320, image_size=32, model_kwargs={"features": 8}, max_epochs=8,
        batch_size=16, seeds=(0, 1, 2), variants=("baseline", "unconstrained", "dual", "exact", "multilevel"),
        n_examples=2, perturbation_steps=4, max_eval_images=16, ig_steps=8, sanity_images=2,
        fills=("mean", "road"), hiding_ks=(20,), precise_bn=64,
    ),
    "3d-full": DemoPreset(
        name="3d-full",
        description="3-D for a GPU: synthetic-brain-3d, 1200 volumes of 64^3 (2.75 mm voxels), 5 seeds, 12 epochs, "
                    "U-Net encoder with 16 base features, the 3d preset's norm, precise_bn and augmentation; every "
                    "test volume, both protocols with the whole own-model grid, the hiding test at both blocks",
        dataset="synthetic-brain-3d", n=1200, image_size=64, model_kwargs={"features": 16}, max_epochs=12,
        batch_size=16, seeds=(0, 1, 2, 3, 4), variants=("baseline", "unconstrained", "dual", "exact", "multilevel"),
        n_examples=4, perturbation_steps=10, max_eval_images=None, ig_steps=16, accelerator="auto",
        split_fractions=(0.7, 0.1, 0.2), fills=("mean", "road"), own_model_methods="all", own_model_variants="all",
        hiding_blocks="all", map_only_methods=(), precise_bn=64,
    ),
}


def get_preset(name: str, **overrides: Any) -> DemoPreset:
    """A preset by name, optionally with fields replaced.

    Raises:
        ValueError: unknown preset name or field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if overrides:
        fields = {f.name for f in dataclasses.fields(DemoPreset)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"unknown preset field(s) {bad}; valid: {sorted(fields)}")
        preset = dataclasses.replace(preset, **overrides)
    return preset


@dataclasses.dataclass
class DemoOutcome:
    """What :func:`run_demo` produced."""

    out: Path
    results: Path
    report: Path
    runs: dict[str, list[Path]]
    wall_time_s: float
    skipped_steps: list[str]


# ----------------------------------------------------------------------------- step bookkeeping


class _Steps:
    """Done-markers under ``out/.steps``: a step whose marker exists is not run again."""

    def __init__(self, out: Path, progress: Callable[[str], None] | None) -> None:
        self.dir = out / ".steps"
        self.progress = progress
        self.skipped: list[str] = []
        self.timings: dict[str, float] = {}

    def done(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None

    def mark(self, name: str, payload: Mapping[str, Any]) -> None:
        atomic_write_json(self.dir / f"{name}.json", dict(payload))

    def say(self, message: str) -> None:
        if self.progress is not None:  # the caller shows it; keep the log for debugging
            logger.debug(message)
            self.progress(message)
        else:
            logger.info(message)

    def run(self, name: str, label: str, fn: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        cached = self.done(name)
        if cached is not None:
            self.skipped.append(name)
            self.say(f"[reuse] {label}")
            self.timings[name] = float(cached.get("_seconds", 0.0))
            return cached
        self.say(f"[start] {label}")
        t0 = time.perf_counter()
        payload = dict(fn())
        payload["_seconds"] = time.perf_counter() - t0
        self.timings[name] = payload["_seconds"]
        self.mark(name, payload)
        self.say(f"[done]  {label} ({payload['_seconds']:.1f} s)")
        return payload


# ----------------------------------------------------------------------------- runs and methods


def runs_by_variant(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """The demo's training runs under ``root`` grouped by variant (from each run's ``config.yaml``).

    A run here is a folder holding ``best.safetensors`` (or ``last.safetensors``) and ``config.yaml``; the
    demo lays them out as ``runs/<variant>/seed<k>`` (a run whose config names no variant is grouped by its
    parent folder's name; one whose config is not YAML is skipped). Folders are visited in sorted order.
    (:meth:`dualattn.runs.RunDir.discover` finds runs without grouping them.)

    Returns:
        variant -> run folders (sorted).
    """
    found: dict[str, list[Path]] = {}
    for cfg in sorted(Path(root).rglob("config.yaml")):
        run = RunDir(cfg.parent)
        if run.weights_file is None:
            continue
        try:
            variant = str(run.config.get("variant", run.path.parent.name))
        except yaml.YAMLError:
            continue
        found.setdefault(variant, []).append(run.path)
    return found


def _available_methods(preset: DemoPreset) -> list[str]:
    known = list(list_methods())
    if preset.methods is None:
        return [m for m in known
                if m not in ("attention", "random") and not m.startswith(("vit", "raw_channel"))]
    unknown = [m for m in preset.methods if m not in known]
    if unknown:
        raise ValueError(f"preset {preset.name!r}: unknown method(s) {unknown}; known: {known}")
    return list(preset.methods)


def _variants_for(preset: DemoPreset) -> list[str]:
    offered = set(list_variants(preset.model))
    dropped = [v for v in preset.variants if v not in offered]
    if dropped:
        logger.info("%s offers no variant(s) %s; skipped", preset.model, dropped)
    return [v for v in preset.variants if v in offered]


def _spatial_dims(data: Path) -> int:
    """2 or 3: the spatial dimensions of the dataset folder's images (from its metadata or first image)."""
    from ..data import FolderDataset

    return FolderDataset(data, normalize="none").spatial_dims


def _image_size_label(size: int, spatial_dims: int) -> str:
    """``"32x32"`` for 2-D images, ``"32x32x32"`` for volumes resized to ``size`` per axis."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
    return "x".join([str(int(size))] * spatial_dims)


# ----------------------------------------------------------------------------- the pipeline


def _train_config(preset: DemoPreset, *, data: Path, variant: str, seed: int, progress: bool) -> TrainConfig:
    return TrainConfig(
        dataset=str(data),
        image_size=preset.image_size,
        model=preset.model,
        variant=variant,
        model_kwargs=dict(preset.model_kwargs),
        max_epochs=preset.max_epochs,
        batch_size=preset.batch_size,
        lr=preset.lr,
        augment=preset.augment,
        augment_policy=preset.augment_policy,
        precise_bn=preset.precise_bn,
        penalty_warmup_epochs=preset.penalty_warmup_epochs,
        seed=seed,
        split_seed=0,
        split_fractions=tuple(preset.split_fractions),
        accelerator=preset.accelerator,
        devices=1 if preset.accelerator == "cpu" else "auto",
        progress=progress,
    )


def train_run(preset: DemoPreset, *, data: Path, out: Path, variant: str, seed: int, progress: bool = False
              ) -> dict[str, Any]:
    """Train (or resume, or reuse when finished) ``out/runs/<variant>/seed<seed>`` as the preset says; a
    variant whose recipe starts from the baseline starts from ``out/runs/baseline/seed<seed>``.

    Returns:
        ``{"run": path relative to out[, "reused": True]}``.
    """
    run_dir = Path(out) / "runs" / variant / f"seed{seed}"
    if RunDir(run_dir).finished:
        return {"run": str(run_dir), "reused": True}
    config = _train_config(preset, data=data, variant=variant, seed=seed, progress=progress)
    init = None
    recipe = DEFAULT_RECIPES.get(variant) or DESIGN_RECIPES.get(variant) or {}
    if recipe.get("init") == "baseline" and variant != "baseline":
        init = Path(out) / "runs" / "baseline" / f"seed{seed}"
    fit(config, out=run_dir, resume=run_dir.is_dir(), init_from=init)
    return {"run": str(run_dir.relative_to(out))}


def train_preset_runs(preset: DemoPreset, *, data: Path, out: Path, progress: bool = False) -> dict[str, list[Path]]:
    """Every run of the preset (seeds outer, variants inner, the baseline first), as the demo trains them;
    finished runs are reused. Studies that train "as the demo does" on another data draw call this.

    Returns:
        variant -> run folders.
    """
    runs: dict[str, list[Path]] = {}
    for seed in preset.seeds:
        for variant in _variants_for(preset):
            train_run(preset, data=data, out=Path(out), variant=variant, seed=seed, progress=progress)
            runs.setdefault(variant, []).append(Path(out) / "runs" / variant / f"seed{seed}")
    return runs


def run_demo(*, preset: str | DemoPreset = "default", dataset: str | None = None,
             out: str | os.PathLike[str], progress: Callable[[str], None] | None = None,
             show_training_progress: bool = False, show_evaluation_progress: bool = False) -> DemoOutcome:
    """Run the demo end to end (see the module docstring), reusing finished steps in ``out``.

    Args:
        preset: a preset name (``tiny``, ``default``, ``full``) or a :class:`DemoPreset`.
        dataset: embedded dataset name (``synthetic-brain``, ``synthetic-pet``, ``br35h``) or a folder in the
            folder format; default the preset's.
        out: output folder (created).
        progress: called with one line per step start/end (the CLI prints them).
        show_training_progress: Lightning's progress bar during training.
        show_evaluation_progress: progress bars while the evaluation explains and scores.

    Returns:
        A :class:`DemoOutcome`.

    Raises:
        ValueError: unknown preset or dataset, or ``out`` holds a demo run with a different preset/dataset.
    """
    t_start = time.perf_counter()
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    dataset = dataset or cfg.dataset
    if dataset not in DEMO_DATASETS and not Path(dataset).is_dir():
        raise ValueError(f"dataset {dataset!r} is neither an embedded dataset ({', '.join(DEMO_DATASETS)}) "
                         "nor an existing folder")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {"preset": cfg.to_dict(), "dataset": str(Path(dataset).resolve()) if Path(dataset).is_dir()
                else dataset}
    ident_path = out_dir / "demo.json"
    if ident_path.is_file():
        previous = json.loads(ident_path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(identity)):
            raise ValueError(f"{out_dir} holds a demo run with another preset or dataset "
                             f"({previous.get('preset', {}).get('name')}, {previous.get('dataset')}); "
                             "choose another --out folder")
    else:
        atomic_write_json(ident_path, identity)
    steps = _Steps(out_dir, progress)

    # 1. data
    def make_data() -> dict[str, Any]:
        path = Path(resolve_dataset(dataset, cache_dir=out_dir / "data", n=cfg.n, size=cfg.image_size,
                                    seed=cfg.data_seed, options=cfg.data_options or None))
        try:  # inside the demo folder: stored relative, so the folder can be moved
            return {"path": str(path.resolve().relative_to(out_dir.resolve())), "relative": True}
        except ValueError:
            return {"path": str(path.resolve()), "relative": False}

    data_step = steps.run("data", f"data: {dataset}", make_data)
    data = (out_dir / data_step["path"]) if data_step.get("relative") else Path(data_step["path"])

    # 2. training, baseline first
    variants = _variants_for(cfg)
    runs: dict[str, list[Path]] = {}
    total = len(variants) * len(cfg.seeds)
    k = 0
    for seed in cfg.seeds:
        for variant in variants:
            k += 1
            run_dir = out_dir / "runs" / variant / f"seed{seed}"
            name = f"train-{variant}-seed{seed}"

            def train_one(variant: str = variant, seed: int = seed) -> dict[str, Any]:
                return train_run(cfg, data=data, out=out_dir, variant=variant, seed=seed,
                                 progress=show_training_progress)

            steps.run(name, f"train {k}/{total}: {variant} (seed {seed})", train_one)
            runs.setdefault(variant, []).append(run_dir)

    methods = _available_methods(cfg)

    # 3. evaluation: both protocols, every method
    eval_dir = out_dir / "eval"

    def evaluate() -> dict[str, Any]:
        settings = EvalSettings(
            data=data, methods="all" if (cfg.methods is None and cfg.references) else tuple(methods),
            size=cfg.image_size, max_images=cfg.max_eval_images, perturbation_steps=cfg.perturbation_steps,
            ig_steps=cfg.ig_steps, sanity_images=cfg.sanity_images,
            own_model_methods=cfg.own_model_methods, own_model_variants=cfg.own_model_variants,
            hiding_ks=tuple(cfg.hiding_ks), hiding_fills=tuple(cfg.hiding_fills), hiding_blocks=cfg.hiding_blocks,
            map_only_methods=tuple(cfg.map_only_methods),
            **({} if cfg.fills is None else {"fills": tuple(cfg.fills)}),
        )
        path = evaluate_runs(out_dir / "runs", out=eval_dir, settings=settings, progress=show_evaluation_progress)
        return {"results": str(Path(path).resolve().relative_to(out_dir.resolve()))}

    evaluated = steps.run("evaluate", "explain with every method, implicit segmentation + perturbation", evaluate)

    # 4. example maps for the figure grid
    examples_file = out_dir / "examples.npz"
    steps.run("examples", "example heatmaps", lambda: collect_examples(
        runs, data=data, methods=methods, out_file=examples_file, n=cfg.n_examples, size=cfg.image_size))

    # 5. results.json + report.html (always rewritten: cheap, and the wall time is updated)
    results = json.loads((out_dir / evaluated["results"]).read_text(encoding="utf-8"))
    wall = sum(v for v in steps.timings.values()) if steps.skipped else time.perf_counter() - t_start
    meta = dict(results.get("meta") or {})
    meta.setdefault("methods", methods)
    meta.update({
        "preset": f"{cfg.name} — {cfg.description}",
        "dataset": dataset,
        "model": f"{cfg.model} ({', '.join(f'{k}={v}' for k, v in cfg.model_kwargs.items())})",
        "variants": variants,
        "seeds": list(cfg.seeds),
        "image_size": _image_size_label(cfg.image_size, _spatial_dims(data)),
        "epochs": cfg.max_epochs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, accelerator {cfg.accelerator}",
        "versions": versions(),
        "wall_time_s": round(wall, 1),
    })
    results["meta"] = meta
    results["demo"] = {"step_seconds": {k: round(v, 2) for k, v in steps.timings.items()},
                       "reused_steps": steps.skipped, "runs": {v: [str(p) for p in ps] for v, ps in runs.items()}}
    results_path = out_dir / "results.json"
    atomic_write_json(results_path, results)
    # every run's model card, now with what the evaluation measured; the report shows one per variant
    cards: dict[str, str] = {}
    for variant, paths in runs.items():
        for k, path in enumerate(paths):
            if RunDir(path).summary:
                command = (f"dualattn demo --preset {cfg.name} --out DEMO   # trains runs/{variant}/seed"
                           f"{cfg.seeds[k] if k < len(cfg.seeds) else k} among the others")
                write_model_card(path, results=results, command=command)
                cards.setdefault(variant, model_card(RunDir(path).summary, results=results, command=command))
    report = write_report(results, out_dir / "report.html", examples=load_examples(examples_file),
                          title="dualattn demo report", cards=cards)
    steps.say(f"[done]  {results_path} and {report} ({time.perf_counter() - t_start:.1f} s)")
    return DemoOutcome(out=out_dir, results=results_path, report=report, runs=runs,
                       wall_time_s=time.perf_counter() - t_start, skipped_steps=steps.skipped)
