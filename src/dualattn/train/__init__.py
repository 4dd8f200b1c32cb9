"""Training: a YAML config -> trained models in a run folder, on a CPU, a GPU or many (Lightning).

Public API:
    TrainConfig, load_config: the run configuration (YAML + ``key=value`` overrides).
    fit(config, *, out, resume=False, init_from=None) -> run folder.
    fit_seeds(config, seeds, out) -> folder with one run per seed and mean ± std.
    load_run(run_dir, which="best") -> the trained model.

Lightning and torch are imported on first use of ``fit``/``fit_seeds``/``load_run``, not here.

Example:
    >>> from dualattn.train import load_config, fit
    >>> cfg = load_config(overrides=["variant=dual", "max_epochs=2", "accelerator=cpu"])  # doctest: +SKIP
    >>> run_dir = fit(cfg, out="runs/dual")  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_exports

from .config import TrainConfig, config_keys, load_config, save_config

__all__ = ["TrainConfig", "config_keys", "fit", "fit_seeds", "load_config", "load_run", "save_config"]

__getattr__, __dir__ = lazy_exports(__name__, {"fit": "run", "fit_seeds": "run", "load_run": "run"})
