"""Explain one scan with a trained run: the predicted class, its probability, and the heatmap written
back in the scan's own geometry (what a clinician opens next to the original file).

Pipeline for one file (PNG/JPG, NPY, NIfTI, DICOM file or series folder, NRRD -- whatever
:func:`dualattn.data.read_volume` reads):

1. read the scan ``(C, *S)`` and its geometry: volumes with a known orientation come as ``(C, X, Y, Z)``
   closest-canonical RAS, with the axis their slices were acquired along (``Geometry.slice_axis``);
2. bring it to the model: channels averaged or repeated to ``in_channels``; resized (trilinear/bilinear)
   to the run's training size when it differs, with a note; normalized per sample like the training data;
3. ``forward`` -> softmax -> predicted class and probability;
4. ``dualattn.explain.explain(model, x, method=..., block=..., target=predicted)`` -> map ``(1, 1, *grid)``;
5. the map is resized to the scan's grid (linear interpolation, scaled by ``cells(map) / voxels(scan)``
   so the total mass is kept up to interpolation) and written as NPY and NIfTI on the input file's own
   voxel grid, and as an overlay PNG with the prediction.

A volume given to a 2-D model is explained slice by slice **as acquired**: along ``Geometry.slice_axis``
(a DICOM series: its images; NIfTI: the header's slice dimension, else the thickest voxel axis, else
axial; ``axis=`` / ``--axis`` overrides), each slice shown to the model in the radiological display
orientation (:func:`dualattn.data.readers.radiological_view`: a DICOM image as stored; the patient's
right on the image's left, anterior up for axial slices). Background slices (every voxel within
``background`` of the volume's intensity range above its minimum, e.g. all-zero slices) are skipped
and counted. The volume's class follows ``volume_rule``:

- ``"max"`` (default): the slice with the highest probability of the lesion class (the last class,
  e.g. ``tumor``; ``target`` when given) decides; the volume's probabilities are that slice's;
- ``"mean"``: the volume's probabilities are the mean over the slices that are not background; the
  deciding slice is the one with the highest probability of the resulting class.

Every slice's map explains the volume's class; the overlay draws the deciding slice, and the tri-planar
view cuts through the same voxel: on that slice, where its map peaks (a cross marks it on both).

What a reader sees (:mod:`dualattn.report.figures`): the map on one fixed colour scale in multiples of the
uniform value (a uniform map is one colour), its sharpness (``exp(entropy)/N``, 1 = uniform) and a warning,
drawn and in the JSON, when the map is near uniform (sharpness above 0.9); slices numbered from 1, with
the DICOM ``InstanceNumber`` of a series' slice; orientation letters from the file (a single DICOM image:
its ``ImageOrientationPatient``).

Example:
    >>> from dualattn.pipelines.scan import explain_scan, write_scan_explanation  # doctest: +SKIP
    >>> result = explain_scan("case.nii.gz", run="runs/exact/seed0", method="exact")  # doctest: +SKIP
    >>> result.deciding_slice, result.class_name, round(result.sharpness, 2)  # doctest: +SKIP
    (77, 'tumor', 0.41)
    >>> write_scan_explanation(result, "out/")  # doctest: +SKIP

Output file names: ``scan-<first 12 hex digits of the content SHA-256>.*`` by default (the same digest
the prediction JSON records), never the scan's file or folder name, which often carry patient
identifiers; ``keep_name=True`` (CLI ``--keep-name``) opts in to naming them after the scan, and
``stem=`` (CLI ``--name``) sets the name explicitly.

Layout (one concept per module; import the public names from here):

==============  =========================================================================================
``result``      :class:`ScanExplanation` (and its JSON summary), :func:`scan_record`
``inputs``      the scan brought to the model (channels, grid, intensities) and the map back; ``--target``
``volumes``     background slices, the volume rule, the axis and planes, a volume slice by slice
``run``         :func:`explain_scan`: the checks before the model runs, then the three cases
``outputs``     :func:`write_scan_explanation`, the overlay and tri-planar PNGs, the terminal summary
==============  =========================================================================================
"""

from __future__ import annotations

from .inputs import (
    MAX_MODEL_VOXELS,
    fit_channels,
    map_to_scan_grid,
    resolve_target,
    run_class_names,
    run_input_size,
    scan_to_model_input,
)
from .outputs import (
    overlay_png_of,
    overlay_title,
    terminal_summary,
    triplanar_png_of,
    validate_stem,
    write_scan_explanation,
)
from .result import ScanExplanation, scan_record
from .run import CLASS_DEPENDENT_FAMILIES, explain_scan
from .volumes import BACKGROUND_FRACTION, SLICE_BATCH, VOLUME_RULES, background_slices, volume_decision

#: the old private name, still used by callers that check a stem before the model runs
_validate_stem = validate_stem

__all__ = ["ScanExplanation", "explain_scan", "write_scan_explanation", "run_input_size", "run_class_names",
           "scan_to_model_input", "map_to_scan_grid", "scan_record", "background_slices", "volume_decision",
           "VOLUME_RULES", "BACKGROUND_FRACTION", "SLICE_BATCH", "MAX_MODEL_VOXELS", "CLASS_DEPENDENT_FAMILIES",
           "overlay_png_of", "overlay_title", "triplanar_png_of", "terminal_summary", "fit_channels",
           "resolve_target", "validate_stem"]
