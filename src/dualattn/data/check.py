"""``dualattn check DATA``: read a folder-format dataset once and report every problem at once.

:func:`check_dataset` reads ``labels.csv``, ``dataset.json`` and every listed image and mask exactly
once, and returns a :class:`CheckReport`: every problem (the file at fault and what is wrong: a
missing, truncated or unreadable file, NaN/Inf voxels, an unknown label, a mask that is not binary
or not of its image's size, a channel count or dimensionality other than the dataset's, an unknown
split value, an empty training or validation split) and a summary (items per class and split,
image sizes, channel counts). Nothing stops at the first problem. Training runs the same check
before its first epoch (``TrainConfig.check_data``), so a broken test image fails the run at once,
not after the training epochs.

:func:`dataset_fingerprint` identifies a dataset's content cheaply (a run records it; see
:meth:`dualattn.runs.RunDir.dataset`), and :func:`fingerprint_changes` says in words what differs.

Example:
    >>> report = check_dataset("my_data")  # doctest: +SKIP
    >>> report.ok, len(report.problems)     # doctest: +SKIP
    (False, 2)
    >>> print(report.format())              # doctest: +SKIP
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DataError
from .folder import (
    LABELS_CSV,
    META_JSON,
    _as_index,
    check_mask,
    class_names_from_labels,
    item_patient,
    parse_labels_csv,
    read_dataset_meta,
    resolve_item_path,
)
from .readers import read_image
from .splits import SPLIT_NAMES, split_indices

__all__ = [
    "Problem",
    "CheckReport",
    "DataCheckError",
    "check_dataset",
    "dataset_fingerprint",
    "fingerprint_changes",
    "FINGERPRINT_VERSION",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One problem: the file at fault (``labels.csv`` for a row's problem) and what is wrong.

    Attributes:
        file: the file or folder, as a path string.
        problem: what is wrong with it.
        row: the ``labels.csv`` line the problem comes from (the header is line 1), when there is one.
    """

    file: str
    problem: str
    row: int | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}, row {self.row}"
        return f"{where}: {self.problem}"


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: the dataset folder.
        rows: rows in ``labels.csv``.
        class_names: the classes in label-index order (empty when they cannot be determined).
        split_counts: ``{split: items per class}`` for ``train``/``val``/``test`` (rows with a known label).
        channels: ``{channel count: images}``.
        sizes: ``{spatial shape: images}``.
        masks: rows with a mask.
        in_channels: the channel count the images are checked against.
        problems: every problem found; the dataset is usable only without any.
        warnings: things that are legal but often a mistake (mixed sizes, a class absent from a split).
    """

    root: Path
    rows: int = 0
    class_names: list[str] = field(default_factory=list)
    split_counts: dict[str, list[int]] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    sizes: dict[tuple[int, ...], int] = field(default_factory=dict)
    masks: int = 0
    in_channels: int | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def summary_lines(self) -> list[str]:
        """The summary: items per class and split, sizes, channels, masks."""
        lines = [f"{self.root}: {self.rows} item(s), {len(self.class_names)} class(es) {self.class_names}"]
        if self.split_counts and self.class_names:
            width = max(len(c) for c in self.class_names)
            lines.append("  " + " " * width + "".join(f"{s:>8}" for s in SPLIT_NAMES) + f"{'total':>8}")
            for k, name in enumerate(self.class_names):
                counts = [self.split_counts.get(s, [0] * len(self.class_names))[k] for s in SPLIT_NAMES]
                lines.append(f"  {name:<{width}}" + "".join(f"{c:>8}" for c in counts) + f"{sum(counts):>8}")
        if self.sizes:
            shown = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in sorted(self.sizes.items(), key=lambda kv: -kv[1]))
            lines.append(f"  sizes: {shown}")
        if self.channels:
            shown = ", ".join(f"{c} ({n})" for c, n in sorted(self.channels.items()))
            lines.append(f"  channels: {shown}" + (f"; checked against {self.in_channels}" if self.in_channels else ""))
        lines.append(f"  masks: {self.masks} of {self.rows} item(s)")
        return lines

    def format(self) -> str:
        """The whole report as text: summary, warnings, then every problem (one per line)."""
        lines = self.summary_lines()
        lines += [f"warning: {w}" for w in self.warnings]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        else:
            lines.append("no problem found")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (``dualattn check --json``)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "rows": self.rows,
            "class_names": list(self.class_names),
            "split_counts": {k: list(v) for k, v in self.split_counts.items()},
            "channels": {str(k): v for k, v in sorted(self.channels.items())},
            "sizes": {"x".join(map(str, k)): v for k, v in self.sizes.items()},
            "masks": self.masks,
            "in_channels": self.in_channels,
            "warnings": list(self.warnings),
            "problems": [{"file": p.file, "row": p.row, "problem": p.problem} for p in self.problems],
        }

    def raise_if_problems(self, context: str = "") -> None:
        """Raise :class:`DataCheckError` listing every problem, if there is any.

        Args:
            context: a prefix for the message, e.g. ``"training data"``.
        """
        if self.problems:
            raise DataCheckError(self, context=context)


class DataCheckError(DataError):
    """A dataset failed :func:`check_dataset`; the message lists every problem (``.report`` holds them)."""

    def __init__(self, report: CheckReport, *, context: str = "") -> None:
        self.report = report
        head = f"{context}: " if context else ""
        listed = "\n".join(f"  {p}" for p in report.problems)
        super().__init__(
            report.root,
            f"{head}{len(report.problems)} problem(s) in the dataset (run `dualattn check {report.root}` for the "
            f"full report):\n{listed}",
        )


def check_dataset(
    root: str | os.PathLike[str],
    *,
    in_channels: int | None = None,
    same_size: bool = False,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    on_item: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Read every row and file of a folder-format dataset once; report every problem at once.

    Problems (each names its file): ``labels.csv`` missing or unreadable, a row with an empty cell, an
    unknown label, a missing image or mask file, an image that cannot be read (truncated, corrupt, of an
    unknown type) or holds NaN/Inf values, an image that is neither 2D nor 3D or whose dimensionality
    differs from the majority's, a channel count other than the expected one (``in_channels``, else
    ``dataset.json``'s, else the majority's; single-channel images are repeated and pass), a mask that
    is not binary, not single-channel or not of its image's size, an unknown ``split`` value, an empty
    ``train`` or ``val`` split, and (with ``same_size``) a size other than the majority's.

    Args:
        root: the dataset folder (``labels.csv`` + files).
        in_channels: the channel count the model takes (None: as above).
        same_size: every image must have the majority's spatial size (training without ``image_size``
            batches the files as they are); otherwise differing sizes are a warning.
        fractions: ``(train, val, test)`` fractions of the seeded split (as in ``FolderDataset``).
        seed: the split seed.
        on_item: called as ``on_item(done, total)`` after each row (progress display).

    Returns:
        The :class:`CheckReport`; ``report.ok`` is True when no problem was found.

    Example:
        >>> import tempfile, numpy as np
        >>> from dualattn.data import FolderWriter
        >>> root = tempfile.mkdtemp()
        >>> with FolderWriter(root, class_names=["normal", "tumor"]) as w:
        ...     for i in range(8):
        ...         w.add(f"c{i}", image=np.zeros((1, 8, 8)), label=i % 2, patient=f"p{i}")
        >>> report = check_dataset(root)
        >>> report.ok, report.rows, report.class_names, report.sizes
        (True, 8, ['normal', 'tumor'], {(8, 8): 8})
    """
    root = Path(root)
    report = CheckReport(root=root)
    problems = report.problems
    if not root.is_dir():
        problems.append(Problem(str(root), "dataset folder does not exist"))
        return report
    csv_path = root / LABELS_CSV
    try:
        meta = read_dataset_meta(root)
    except DataError as exc:
        problems.append(Problem(str(root / META_JSON), exc.problem))
        meta = {}
    rows, row_problems = parse_labels_csv(root)
    problems += [Problem(str(csv_path), msg, line) for line, msg in row_problems]
    report.rows = len(rows) + sum(1 for line, _ in row_problems if line is not None)
    if not rows:
        return report
    if "class_names" in meta:
        names = meta["class_names"]
        if isinstance(names, list) and names and len({str(n) for n in names}) == len(names):
            report.class_names = [str(n) for n in names]
        else:
            problems.append(Problem(str(root / META_JSON), f"class_names must be a list of distinct names; got {names!r}"))
    else:
        try:
            report.class_names = class_names_from_labels([r["label"] for r in rows], csv_path=csv_path)
        except DataError as exc:
            problems.append(Problem(str(csv_path), exc.problem))
    index = {name: i for i, name in enumerate(report.class_names)}

    shapes: dict[str, tuple[int, ...]] = {}  # image path -> (C, *S) of the images that could be read
    labelled: list[tuple[int, str, str]] = []  # (label index, patient, split cell) of rows with a known label
    seen: dict[str, int] = {}
    constant = 0
    for done, row in enumerate(rows, start=1):
        line = int(row["_line"])
        label = row["label"]
        y = index[label] if label in index else _as_index(label)
        if report.class_names and (y is None or not 0 <= y < len(report.class_names)):
            problems.append(Problem(str(csv_path), f"unknown label {label!r} for {row['image']!r} "
                                                   f"(classes: {report.class_names})", line))
            y = None
        if row["image"] in seen:
            report.warnings.append(f"{csv_path}, row {line}: image {row['image']!r} is listed again "
                                   f"(first on row {seen[row['image']]})")
        seen.setdefault(row["image"], line)
        image = _read(resolve_item_path(root, row["image"]), "image", row["image"], csv_path, line, problems)
        if image is not None:
            img_path = str(resolve_item_path(root, row["image"]))
            if image.ndim not in (3, 4):
                problems.append(Problem(img_path, f"expected a 2D or 3D image; got array shape {image.shape}"))
            else:
                shapes[img_path] = tuple(int(s) for s in image.shape)
                if image.size > 1 and float(image.max()) == float(image.min()):
                    constant += 1
        if row.get("mask"):
            report.masks += 1
            mask_path = resolve_item_path(root, row["mask"])
            mask = _read(mask_path, "mask", row["mask"], csv_path, line, problems)
            if mask is not None:
                try:
                    mask = check_mask(mask, path=mask_path)
                except DataError as exc:
                    problems.append(Problem(str(mask_path), exc.problem))
                else:
                    if image is not None and image.ndim in (3, 4) and mask.shape[1:] != image.shape[1:]:
                        problems.append(Problem(str(mask_path), f"mask size {tuple(mask.shape[1:])} differs from "
                                                                f"image size {tuple(image.shape[1:])} ({row['image']})"))
        if y is not None:
            labelled.append((y, item_patient(row), row.get("split", "")))
        if on_item is not None:
            on_item(done, len(rows))
    if constant:
        report.warnings.append(f"{constant} image(s) hold a single value everywhere (blank images?)")
    _check_shapes(report, shapes, meta=meta, in_channels=in_channels, same_size=same_size)
    _count_splits(report, labelled, csv_path=csv_path, fractions=fractions, seed=seed)
    return report


def _read(path: Path, column: str, value: str, csv_path: Path, line: int, problems: list[Problem]) -> np.ndarray | None:
    """Read one image or mask; a problem (and None) when it is missing or unreadable."""
    if not path.exists():
        problems.append(Problem(str(csv_path), f"{column} file {value!r} does not exist ({path})", line))
        return None
    try:
        return read_image(path)
    except DataError as exc:
        problems.append(Problem(str(path), exc.problem))
    except Exception as exc:  # a reader's own failure on a hostile file: still one problem, not a crash
        problems.append(Problem(str(path), f"cannot read ({type(exc).__name__}: {exc})"))
    return None


def _majority(counter: collections.Counter) -> Any:
    """The most common value (ties: the smallest)."""
    best = max(counter.values())
    return min(k for k, n in counter.items() if n == best)


def _check_shapes(report: CheckReport, shapes: dict[str, tuple[int, ...]], *, meta: dict[str, Any],
                  in_channels: int | None, same_size: bool) -> None:
    """Channel counts, dimensionality and sizes against the dataset's (summary + problems)."""
    if not shapes:
        return
    channels = collections.Counter(s[0] for s in shapes.values())
    sizes = collections.Counter(s[1:] for s in shapes.values())
    dims = collections.Counter(len(s) - 1 for s in shapes.values())
    report.channels = dict(channels)
    report.sizes = dict(sizes)
    if in_channels is not None:
        expected, why = int(in_channels), "the model takes"
    elif isinstance(meta.get("in_channels"), int):
        expected, why = int(meta["in_channels"]), "dataset.json says"
    else:
        expected, why = int(_majority(channels)), f"most images ({channels[_majority(channels)]}) have"
    report.in_channels = expected
    for path, shape in shapes.items():
        if shape[0] not in (expected, 1):
            report.problems.append(Problem(path, f"image has {shape[0]} channel(s); {why} {expected} "
                                                 "(only single-channel images are repeated)"))
    if in_channels is None and "in_channels" not in meta and expected > 1:
        first = next(iter(shapes.values()))[0]
        if first != expected:
            report.warnings.append(f"the first image has {first} channel(s) but most have {expected}: training takes "
                                   f"the channel count from the first image; set in_channels={expected}")
    n_dims = _majority(dims)
    for path, shape in shapes.items():
        if len(shape) - 1 != n_dims:
            report.problems.append(Problem(path, f"image is {len(shape) - 1}D; the dataset's images are {n_dims}D"))
    sizes = collections.Counter(s[1:] for s in shapes.values() if len(s) - 1 == n_dims)
    if len(sizes) > 1:
        common = _majority(sizes)
        if same_size:
            for path, shape in shapes.items():
                if shape[1:] != common and len(shape) - 1 == n_dims:
                    report.problems.append(Problem(path, f"image size {shape[1:]} differs from the dataset's "
                                                         f"{common} (set image_size to resize every image)"))
        else:
            report.warnings.append(f"images have {len(sizes)} different sizes: training batches them only with "
                                   "image_size set (train: --set image_size=N)")


def _count_splits(report: CheckReport, labelled: list[tuple[int, str, str]], *, csv_path: Path,
                  fractions: Sequence[float], seed: int) -> None:
    """Items per class and split (the ``split`` column when every row has one, else the seeded split)."""
    k = len(report.class_names)
    if not labelled or not k:
        return
    cells = [s for _, _, s in labelled]
    if all(cells):
        bad = sorted({s for s in cells if s not in SPLIT_NAMES})
        if bad:
            report.problems.append(Problem(str(csv_path), f"unknown split value(s) {bad}; expected {SPLIT_NAMES}"))
        chosen = {s: [i for i, c in enumerate(cells) if c == s] for s in SPLIT_NAMES}
    else:
        if any(cells):
            report.warnings.append(f"the split column is filled on {sum(1 for c in cells if c)} of {len(cells)} "
                                   "row(s) only: it is ignored and the seeded split is used")
        try:
            chosen = split_indices([p for _, p, _ in labelled], labels=[y for y, _, _ in labelled],
                                   fractions=fractions, seed=seed)
        except ValueError as exc:
            report.problems.append(Problem(str(csv_path), f"cannot split: {exc}"))
            return
    for split in SPLIT_NAMES:
        counts = [0] * k
        for i in chosen.get(split, []):
            counts[labelled[i][0]] += 1
        report.split_counts[split] = counts
    for split in ("train", "val"):
        if sum(report.split_counts[split]) == 0:
            report.problems.append(Problem(str(csv_path), f"the {split!r} split is empty (add items or change the "
                                                          "split fractions / split column)"))
    for split in SPLIT_NAMES:
        counts = report.split_counts[split]
        missing = [report.class_names[c] for c in range(k) if counts[c] == 0]
        if sum(counts) and missing:
            report.warnings.append(f"the {split!r} split has no item of class(es) {missing}")


# --------------------------------------------------------------------------- fingerprint

#: Bumped when :func:`dataset_fingerprint` changes what it hashes (fingerprints of other versions
#: are not compared).
FINGERPRINT_VERSION = 1
_SAMPLE_FILES = 64
_SAMPLE_BYTES = 1 << 20


def _files(path: Path) -> list[Path]:
    """The files behind a ``labels.csv`` entry: itself, or a DICOM series folder's files (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def _content_digest(path: Path, limit: int) -> bytes:
    """SHA-256 of a file's bytes, or of its first and last ``limit // 2`` bytes when it is larger."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= limit:
            h.update(fh.read())
        else:
            h.update(fh.read(limit // 2))
            fh.seek(size - limit // 2)
            h.update(fh.read())
    return h.digest()


def dataset_fingerprint(root: str | os.PathLike[str]) -> dict[str, Any]:
    """A cheap fingerprint of a folder-format dataset's content (what a run records of its data).

    Three SHA-256 digests, so a difference can be named:

    - ``labels_sha256``: the bytes of ``labels.csv`` and ``dataset.json`` (rows added, removed,
      relabelled, re-split, renamed);
    - ``sizes_sha256``: every listed image and mask file's name and size in bytes, in row order
      (a file replaced by one of another size: truncated, resized, re-encoded; a file missing);
    - ``sample_sha256``: the content of up to 64 listed files spread evenly over the rows (whole
      files up to 1 MiB, the first and last 512 KiB of larger ones): a dataset regenerated in place
      with files of the same size.

    File modification times are left out on purpose: a copy (``cp``, ``rsync`` without ``-t``, an
    archive) changes them without changing the data, and moving the data is what the fingerprint must
    survive. The cost is one ``stat`` per file and at most 64 MiB read. What it does not see: one
    file rewritten in place with the same size outside the sample.

    Args:
        root: the dataset folder.

    Returns:
        ``{"version", "rows", "files", "bytes", "labels_sha256", "sizes_sha256", "sample_sha256"}``.

    Raises:
        DataError: no readable ``labels.csv`` (or a row with an empty cell).

    Example:
        >>> fp = dataset_fingerprint("my_data")  # doctest: +SKIP
        >>> fingerprint_changes(fp, dataset_fingerprint("my_data"))  # doctest: +SKIP
        []
    """
    from .folder import read_labels_csv

    root = Path(root)
    rows = read_labels_csv(root)
    labels = hashlib.sha256()
    for name in (LABELS_CSV, META_JSON):
        p = root / name
        labels.update(name.encode() + b"\0")
        labels.update(p.read_bytes() if p.is_file() else b"<absent>")
        labels.update(b"\0")
    sizes = hashlib.sha256()
    entries: list[Path] = []
    total = n_files = 0
    for row in rows:
        for column in ("image", "mask"):
            value = row.get(column)
            if not value:
                continue
            path = resolve_item_path(root, value)
            entries.append(path)
            files = _files(path)
            sizes.update(f"{column}\0{value}\0".encode())
            if not files:
                sizes.update(b"<missing>\0")
            for f in files:
                size = f.stat().st_size
                total += size
                n_files += 1
                sizes.update(f"{f.relative_to(path).as_posix() if f != path else ''}\0{size}\0".encode())
    sample = hashlib.sha256()
    if entries:
        k = min(_SAMPLE_FILES, len(entries))
        picks = sorted({round(i * (len(entries) - 1) / max(k - 1, 1)) for i in range(k)})
        for i in picks:
            files = _files(entries[i])
            sample.update(f"{i}\0".encode())
            if files:  # a series folder: its first file stands for it
                sample.update(_content_digest(files[0], _SAMPLE_BYTES))
    return {
        "version": FINGERPRINT_VERSION,
        "rows": len(rows),
        "files": n_files,
        "bytes": total,
        "labels_sha256": labels.hexdigest(),
        "sizes_sha256": sizes.hexdigest(),
        "sample_sha256": sample.hexdigest(),
    }


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """What differs between two :func:`dataset_fingerprint` results, in words (``[]``: the same data).

    Fingerprints of another version, or a missing one, cannot be compared and give ``[]``.

    Example:
        >>> a = {"version": 1, "rows": 10, "files": 10, "bytes": 100, "labels_sha256": "x",
        ...      "sizes_sha256": "y", "sample_sha256": "z"}
        >>> fingerprint_changes(a, {**a, "rows": 11, "labels_sha256": "w"})
        ['labels.csv or dataset.json differ (10 -> 11 rows: rows added, removed or relabelled)']
    """
    if not old or not new or old.get("version") != new.get("version"):
        return []
    changes = []
    if old.get("labels_sha256") != new.get("labels_sha256"):
        changes.append(f"labels.csv or dataset.json differ ({old.get('rows')} -> {new.get('rows')} rows: "
                       "rows added, removed or relabelled)")
    if old.get("sizes_sha256") != new.get("sizes_sha256"):
        changes.append(f"the listed files differ in name or size ({old.get('files')} files, {old.get('bytes')} bytes "
                       f"-> {new.get('files')} files, {new.get('bytes')} bytes)")
    if old.get("sample_sha256") != new.get("sample_sha256") and not changes:
        changes.append("the content of the listed files differs (same names and sizes)")
    return changes
