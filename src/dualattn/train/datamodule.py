"""Data loading for training: reproducible per-epoch order, rank sharding, streaming from disk.

Datasets are read lazily item by item (``dualattn.data.FolderDataset`` reads one file per
``__getitem__``), so a dataset larger than RAM streams from disk through ``num_workers`` worker
processes. The training order of epoch ``e`` is a pure function of ``(seed, e)`` and every worker's
random state is derived from ``(seed, e, rank, worker)``; nothing depends on the global random
state, which is what makes a resumed run repeat an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TrainConfig

__all__ = ["EpochSampler", "TrainDataModule", "build_datasets", "check_data", "epoch_seed", "resolve_data"]

logger = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int, *parts: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch, *parts)`` (stable across runs and platforms)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), *(int(p) for p in parts)])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64).dot([1, 1 << 31]) % (1 << 63))


def seed_all(value: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer."""
    random.seed(value)
    np.random.seed(value % (1 << 32))
    torch.manual_seed(value)


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation fixed by ``(seed, epoch)``, sharded over ranks.

    Like ``torch.utils.data.DistributedSampler`` but the epoch may come from a callable, read when
    the epoch's iteration starts (Lightning builds the first iterator of a resumed run before it
    calls ``set_epoch``).

    Args:
        length: dataset size N.
        shuffle: random permutation per epoch (training) or the natural order (evaluation).
        seed: base seed of the permutations.
        rank: this process's rank; world_size: number of processes.
        pad: repeat indices so every rank gets ceil(N / world_size) (training under DDP needs the
            same number of steps on every rank); without it ranks get N // world_size or one more.
        epoch_fn: optional callable returning the current epoch (overrides ``set_epoch``).
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        if length < 0:
            raise ValueError(f"length={length} must be >= 0")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.epoch_fn = epoch_fn

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start."""
        self.epoch = int(epoch)

    def current_epoch(self) -> int:
        """The epoch whose order the next iteration yields."""
        return int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.length, generator=gen).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1 and self.length > 0:
            total = math.ceil(self.length / self.world_size) * self.world_size
            order = (order * math.ceil(total / self.length))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.current_epoch()))

    def __len__(self) -> int:
        if self.pad and self.world_size > 1:
            return math.ceil(self.length / self.world_size)
        return len(range(self.rank, self.length, self.world_size))


class _WorkerInit:
    """Seeds each data-loader worker from (seed, epoch, rank, worker id): picklable for spawn."""

    def __init__(self, sampler: EpochSampler, seed: int, rank: int) -> None:
        self.epoch = 0
        self.sampler = sampler
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        seed_all(epoch_seed(self.seed, self.epoch, 1 + self.rank, 1 + worker_id))


def resolve_data(config: TrainConfig) -> Path:
    """The dataset folder ``config.dataset`` names (an embedded dataset is generated once)."""
    from dualattn.data import resolve_dataset

    return resolve_dataset(
        config.dataset, cache_dir=config.cache_dir, n=config.data_n, size=config.image_size, seed=config.split_seed
    )


def check_data(config: TrainConfig, root: str | os.PathLike[str]) -> Any:
    """Read every file of the dataset once and raise with every problem listed (before any epoch).

    Checked as training will read it: against ``config.in_channels``, the config's split, and (without
    ``image_size``) one size for all images.

    Returns:
        The :class:`dualattn.data.check.CheckReport` (no problem in it).

    Raises:
        dualattn.data.DataCheckError: any problem (a ``DataError``, so a ``ValueError``), each one listed.
    """
    from dualattn.data.check import check_dataset

    t0 = time.perf_counter()
    report = check_dataset(
        root,
        in_channels=config.in_channels,
        same_size=config.image_size is None,
        fractions=tuple(config.split_fractions),
        seed=config.split_seed,
    )
    for warning in report.warnings:
        logger.warning("training data: %s", warning)
    report.raise_if_problems(f"training data {root}")
    logger.info("checked %s: %d item(s), no problem (%.1f s)", root, report.rows, time.perf_counter() - t0)
    return report


def check_channels(datasets: dict[str, Dataset], report: Any) -> None:
    """Every image's channel count must suit the channel count each split took (from its first image
    when neither ``in_channels`` nor ``dataset.json`` says).

    Raises:
        dualattn.data.DataError: a split would meet an image it cannot take.
    """
    from dualattn.data import DataError

    for split, ds in datasets.items():
        want = getattr(ds, "in_channels", None)
        bad = sorted(c for c in report.channels if want is not None and c not in (1, want))
        if bad:
            raise DataError(report.root, f"the {split!r} split takes {want} channel(s) (its first image's) but "
                                         f"images have {sorted(report.channels)}: set in_channels "
                                         f"(--set in_channels=N)")


def build_datasets(config: TrainConfig, *, root: str | os.PathLike[str] | None = None) -> dict[str, Dataset]:
    """Resolve the dataset and open its train/val/test splits (augmentation on train only: ``config.augment_policy``
    when ``config.augment``, resolved against the data's orientation by ``FolderDataset``; intensities normalized
    per sample as :func:`dualattn.train.recipes.data_normalization` says: ``config.normalize``, else the variant's).

    Args:
        config: the run configuration.
        root: the resolved dataset folder (default: :func:`resolve_data`).

    Returns:
        ``{"train": ds, "val": ds, "test": ds}`` of ``dualattn.data.FolderDataset``.
    """
    from dualattn.data import FolderDataset

    from .recipes import data_normalization

    root = resolve_data(config) if root is None else Path(root)
    common: dict[str, Any] = dict(
        size=config.image_size,
        in_channels=config.in_channels,
        seed=config.split_seed,
        fractions=tuple(config.split_fractions),
        normalize=data_normalization(config),
    )
    out: dict[str, Dataset] = {}
    policy = config.augment_policy if config.augment else False
    for split in ("train", "val", "test"):
        out[split] = FolderDataset(root, split=split, augment=policy if split == "train" else False, **common)
    logger.info(
        "dataset %s: %s", root, ", ".join(f"{k}={len(v)}" for k, v in out.items())  # type: ignore[arg-type]
    )
    return out


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and labels only (masks and ids are not needed to train)."""
    return {
        "image": torch.stack([torch.as_tensor(it["image"]) for it in items]),
        "label": torch.stack([torch.as_tensor(it["label"], dtype=torch.long).reshape(()) for it in items]),
    }


class TrainDataModule(pl.LightningDataModule):
    """Lightning data module over prepared train/val/test datasets.

    Args:
        datasets: ``{"train": ..., "val": ..., "test": ...}``; items are dicts with ``image``
            (C, *S) and ``label`` (int).
        config: batch sizes, workers and the seed.
    """

    def __init__(self, datasets: dict[str, Dataset], *, config: TrainConfig) -> None:
        super().__init__()
        for split in ("train", "val"):
            if split not in datasets or len(datasets[split]) == 0:  # type: ignore[arg-type]
                raise ValueError(f"the {split!r} split is empty; change split_fractions or add images")
        self.datasets = datasets
        self.config = config

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def loader(self, split: str, *, train: bool, shard: bool = True) -> DataLoader:
        """A data loader over ``split``; ``train`` shuffles per epoch and pads ranks to equal length.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            train: training order (shuffled by (seed, epoch)) or evaluation order.
            shard: split the items over the DDP ranks (False: every item, e.g. for a final test).
        """
        cfg = self.config
        ds = self.datasets[split]
        rank, world = self._rank_world() if shard else (0, 1)
        trainer = self.trainer
        epoch_fn = None
        if train and trainer is not None:
            progress = trainer.fit_loop.epoch_progress.current

            def epoch_fn() -> int:
                return int(progress.processed)

        sampler = EpochSampler(
            len(ds),  # type: ignore[arg-type]
            shuffle=train,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            pad=train,
            epoch_fn=epoch_fn,
        )
        batch = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
        # a last batch of one sample breaks BatchNorm in training mode: drop only that case
        drop_last = train and len(sampler) > batch and len(sampler) % batch == 1
        worker_init = _WorkerInit(sampler, cfg.seed, rank)
        if cfg.num_workers > 0:
            # the epoch is read when the workers start (the iterator is created)
            worker_init.epoch = sampler.current_epoch()
        loader = _EpochDataLoader(
            ds,
            batch_size=batch,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=_collate,
            drop_last=drop_last,
            pin_memory=torch.cuda.is_available() and cfg.accelerator != "cpu",
            worker_init_fn=worker_init if cfg.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=False,
        )
        loader.worker_init = worker_init
        return loader

    def calibration_batches(self, n: int, *, labels: bool = False) -> list[Any]:
        """Image batches (``batch_size`` each) of ``n`` training items evenly spaced over the split, read without
        augmentation (all items when ``n`` >= the split's size), the same on every rank: what
        ``TrainConfig.precise_bn`` recomputes BatchNorm's statistics on. With ``labels``, ``(images, labels)``
        pairs (labels ``(B,)`` int64)."""
        ds = self.datasets["train"]
        size = len(ds)  # type: ignore[arg-type]
        if n >= size:
            idx = list(range(size))
        else:
            idx = sorted({int(i * size // n) for i in range(n)})
        read = getattr(ds, "item", None)
        items = [read(i, augment=False) if callable(read) else ds[i] for i in idx]
        images = [torch.as_tensor(it["image"]) for it in items]
        b = self.config.batch_size
        # a last batch of one image has no batch variance: join it to the one before
        cuts = list(range(0, len(images), b))
        if len(cuts) > 1 and len(images) - cuts[-1] == 1:
            cuts.pop()
        spans = list(zip(cuts, [*cuts[1:], len(images)]))
        if labels:
            ys = [torch.as_tensor(it["label"]).reshape(()).long() for it in items]
            return [(torch.stack(images[s:e]), torch.stack(ys[s:e])) for s, e in spans]
        return [torch.stack(images[s:e]) for s, e in spans]

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", train=False)


class _EpochDataLoader(DataLoader):
    """A DataLoader that tells its worker seeding which epoch an iterator belongs to."""

    worker_init: _WorkerInit | None = None

    def __iter__(self) -> Any:
        if isinstance(self.sampler, EpochSampler) and self.sampler.shuffle:
            epoch = self.sampler.current_epoch()
            if self.worker_init is not None:
                self.worker_init.epoch = epoch
            # the stream depends on the training seed too (the dataset's own seed is the split seed,
            # shared by all training seeds)
            _set_dataset_epoch(self.dataset, epoch_seed(self.sampler.seed, epoch, 7) % (1 << 31))
        return super().__iter__()


def _set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Select the dataset's augmentation stream for ``epoch`` (before workers copy the dataset).

    ``FolderDataset`` draws augmentations from ``rng(seed, epoch, index, draw)`` where ``draw``
    counts earlier reads of the item by this dataset object; the counters are cleared so that the
    stream of epoch ``e`` is the same whether or not the process trained epochs ``0..e-1`` (resume).
    """
    set_epoch = getattr(dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    draws = getattr(dataset, "_draws", None)
    if isinstance(draws, dict):
        draws.clear()
