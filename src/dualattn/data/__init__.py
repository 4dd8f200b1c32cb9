"""Data for dualattn: readers, the folder format, patient-level splits, embedded datasets, preprocessing.

Public API (see ``docs/data.md``):

- :func:`read_image`, :func:`read_volume`, :func:`read_dicom_series`, :func:`write_nifti`, :class:`Geometry`
- :class:`FolderDataset` (the folder format: ``labels.csv`` + files), :class:`FolderWriter`
- :func:`split_patients`, :func:`split_indices` (patient-level, seeded, order-independent)
- :func:`list_datasets`, :func:`make_dataset`, :func:`resolve_dataset` (embedded ``synthetic-brain``,
  ``synthetic-pet``, ``br35h``)
- :func:`prepare_brats`, :func:`prepare_pet` (the paper's preprocessing), :func:`prepare_msd` (the Medical
  Segmentation Decathlon's Task01_BrainTumour, 2-D halves or 3-D volumes)
- :func:`check_dataset` (every problem of a dataset at once: ``dualattn check``), :func:`dataset_fingerprint`,
  :func:`fingerprint_changes` (what a run records of its data)
- :class:`DataError` (a ``ValueError`` naming the file and the problem)

Importing this package is cheap: numpy only; torch, nibabel, pydicom load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .errors import DataError

_LAZY = {
    "read_image": "readers",
    "read_volume": "readers",
    "read_dicom_series": "readers",
    "write_nifti": "readers",
    "Geometry": "readers",
    "FolderDataset": "folder",
    "FolderWriter": "folder",
    "split_patients": "splits",
    "split_indices": "splits",
    "list_datasets": "_registry",
    "dataset_info": "_registry",
    "make_dataset": "_registry",
    "resolve_dataset": "_registry",
    "prepare_brats": "brats",
    "prepare_msd": "msd",
    "prepare_pet": "pet",
    "suv_bw": "pet",
    "check_dataset": "check",
    "CheckReport": "check",
    "DataCheckError": "check",
    "dataset_fingerprint": "check",
    "fingerprint_changes": "check",
}

__all__ = ["DataError", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
