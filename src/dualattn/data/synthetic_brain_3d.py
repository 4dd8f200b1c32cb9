"""``synthetic-brain-3d``: whole BraTS-like volumes made from the real MNI152 template.

Anatomy: the ICBM152 2009a template (T1 and grey/white-matter probability maps shipped inside
nilearn's wheel, read with nibabel as in :mod:`dualattn.data.synthetic_brain`) resampled to an
isotropic ``size^3`` cube covering a 176 mm field of view, varied per synthetic patient by a random
global affine (rotation about the three axes, anisotropic scale, shift), a smooth random 3-D
deformation and, for tumour volumes, the tumour's mass effect.

Modalities T1 / T1ce / T2 / FLAIR are synthesised from tissue probabilities with the tissue and
tumour contrasts of :mod:`dualattn.data.synthetic_brain`, each with its own random gamma, bias field
and Rician noise level.

Gliomas (label 1, half of the volumes): one irregular 3-D lesion per volume, centred in the brain
interior of a random hemisphere (boundary lobulated by a smooth random field), with necrotic core,
enhancing rim (absent in ~25 % of "low-grade" lesions), solid tumour and oedema that spreads along
white matter; contrast drawn per volume from subtle to obvious. Its voxel mask (whole tumour:
core or oedema, inside the brain) is the item's mask; label-0 volumes carry an empty mask.

Confounders, in BOTH classes with the same distributions: white-matter hyperintensities (bright
T2/FLAIR spots) and larger non-enhancing FLAIR patches, curvilinear vessels bright on T1ce,
periventricular FLAIR caps, bright artefacts along parts of the brain's edge (incomplete skull
stripping). A raw channel used as a heatmap therefore localises the tumour poorly.

Array order: each item is ``(4, X, Y, Z)`` float32 with indices increasing towards the patient's
Right, Anterior and Superior (RAS: the order a canonical NIfTI reads in), isotropic voxels of
``176 / size`` mm. Labels are balanced (``n // 2`` or ``n // 2 + 1`` tumour volumes); every volume
is its own patient.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from .synthetic_brain import _TISSUE, _TUMOR, CHANNELS, CLASS_NAMES, _template

__all__ = ["generate", "CHANNELS", "FOV_MM", "voxel_to_mni"]

logger = logging.getLogger(__name__)

#: Side of the cube's field of view (mm); the voxel size is ``FOV_MM / size``.
FOV_MM: float = 176.0
#: MNI coordinates (mm) of the cube's centre.
_CENTER = (0.0, -18.0, 12.0)
_GENERATOR_VERSION = 1


def voxel_to_mni(size: int) -> np.ndarray:
    """The ``4 x 4`` affine from voxel indices ``(i, j, k)`` of a ``size^3`` item to MNI millimetres.

    Args:
        size: the cube's side in voxels.

    Returns:
        float64 ``(4, 4)`` RAS affine (diagonal: ``FOV_MM / size``).

    Example:
        >>> voxel_to_mni(44)[:3, 3].round(1).tolist()
        [-86.0, -104.0, -74.0]
    """
    d = FOV_MM / size
    aff = np.diag([d, d, d, 1.0])
    aff[:3, 3] = [c - FOV_MM / 2 + d / 2 for c in _CENTER]
    return aff


def _smooth3(gen, b: int, ch: int, grid: int, size: int):
    """Smooth random field ``(b, ch, S, S, S)``: N(0,1) control points on ``grid^3``, upsampled 4x,
    blurred there (so the field has no trilinear kinks), then trilinear to ``size``."""
    import torch
    import torch.nn.functional as F

    ctrl = torch.randn((b, ch, grid, grid, grid), generator=gen)
    mid = F.interpolate(ctrl, size=(4 * grid,) * 3, mode="trilinear", align_corners=True)
    return F.interpolate(_blur3(mid, 2.0), size=(size,) * 3, mode="trilinear", align_corners=True)


def _blur3(x, sigma: float):
    """Separable Gaussian blur of ``(B, C, S, S, S)`` with ``sigma`` voxels (replicate padding)."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0.3:
        return x
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = x
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        w = k.view(*shape).repeat(c, 1, 1, 1, 1)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), w, groups=c)
    return out


def _params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-volume random draws (numpy, so the stream is stable across torch versions)."""
    labels = rng.permutation(np.arange(n) % 2)
    return {
        "label": labels,
        "rot": np.radians(rng.uniform(-8, 8, (n, 3))),
        "scale": rng.uniform(0.9, 1.08, (n, 3)),
        "shift": rng.uniform(-5, 5, (n, 3)),
        "deform_amp": rng.uniform(1.5, 4.0, n),
        "radius": rng.uniform(14, 28, n),
        "elong": rng.uniform(0.8, 1.25, (n, 3)),
        "edema": rng.uniform(1.15, 1.7, n),
        "necrosis": np.where(rng.random(n) < 0.35, 0.0, rng.uniform(0.2, 0.5, n)),
        "rim": np.where(rng.random(n) < 0.25, 0.0, rng.uniform(0.12, 0.3, n)),
        "contrast": 0.5 + 0.5 * rng.uniform(0.0, 1.0, n) ** 0.8,
        "mass_effect": rng.uniform(0.0, 0.35, n),
        "gamma": rng.uniform(0.8, 1.25, (n, 4)),
        "tissue_jitter": rng.uniform(0.9, 1.1, (n, 4, 3)),
        "noise": rng.uniform(0.01, 0.05, n),
        "lobes": rng.uniform(0.0, 0.3, n),
    }


def _tumour_centres(rng: np.random.Generator, n: int, vol) -> np.ndarray:
    """``(n, 3)`` MNI centres drawn uniformly among template voxels of the deep brain (``|x| >= 14``)."""
    import torch

    brain = vol[:, 3:4]
    interior = _blur3(brain, 4.0)[0, 0] > 0.97  # (Z, Y, X), >~ 8 mm from the edge (pooled grid)
    _, _, nz, ny, nx = vol.shape
    f = round(197.0 / nx)
    z, y, x = torch.nonzero(interior, as_tuple=True)
    mx, my, mz = x * f + (f - 1) / 2 - 98.0, y * f + (f - 1) / 2 - 134.0, z * f + (f - 1) / 2 - 72.0
    ok = (mx.abs() >= 14) & (mz >= -25) & (mz <= 55) & (my >= -85) & (my <= 40)
    pts = torch.stack([mx[ok], my[ok], mz[ok]], 1).numpy().astype(np.float64)
    return pts[rng.integers(0, len(pts), n)] + rng.uniform(-f / 2, f / 2, (n, 3))


def _rotation(angles) -> "object":
    """``(B, 3, 3)`` rotation matrices from ``(B, 3)`` angles about x, y, z."""
    import torch

    a, b, c = angles[:, 0], angles[:, 1], angles[:, 2]
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, a.cos(), -a.sin(), zero, a.sin(), a.cos()], 1).view(-1, 3, 3)
    ry = torch.stack([b.cos(), zero, b.sin(), zero, one, zero, -b.sin(), zero, b.cos()], 1).view(-1, 3, 3)
    rz = torch.stack([c.cos(), -c.sin(), zero, c.sin(), c.cos(), zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def _render(gen, sel: dict, centres, size: int, vol):
    """Render volumes ``(B, 4, S, S, S)`` and whole-tumour masks ``(B, S, S, S)`` (axes x, y, z)."""
    import torch
    import torch.nn.functional as F

    B, S = len(sel["label"]), size
    d = FOV_MM / S
    ax = [(c - FOV_MM / 2 + (torch.arange(S, dtype=torch.float32) + 0.5) * d) for c in _CENTER]
    X, Y, Z = torch.meshgrid(*ax, indexing="ij")  # (S, S, S) each, MNI mm
    P = torch.stack([X, Y, Z], 0).unsqueeze(0).expand(B, 3, S, S, S)
    pos = sel["label"].view(B, 1, 1, 1) > 0.5
    c = centres.view(B, 3, 1, 1, 1)
    diff = P - c
    # anisotropic distance to the tumour centre (mm), ellipsoidal lesions
    r2 = ((diff / sel["elong"].view(B, 3, 1, 1, 1)) ** 2).sum(1)
    dist = r2.sqrt()

    # -- geometry: output voxel -> template (mass effect, inverse affine, deformation)
    sig = (1.6 * sel["radius"]).view(B, 1, 1, 1)
    pull = (sel["mass_effect"].view(B, 1, 1, 1) * torch.exp(-r2 / (2 * sig**2)) * pos).unsqueeze(1)
    Q = P - pull * diff - torch.tensor(_CENTER).view(1, 3, 1, 1, 1) - sel["shift"].view(B, 3, 1, 1, 1)
    R = _rotation(sel["rot"])
    Q = torch.einsum("bij,bjxyz->bixyz", R, Q) / sel["scale"].view(B, 3, 1, 1, 1)
    Q = Q + torch.tensor(_CENTER).view(1, 3, 1, 1, 1)
    Q = Q + _smooth3(gen, B, 3, 5, S) * sel["deform_amp"].view(B, 1, 1, 1, 1)
    _, _, nz, ny, nx = vol.shape
    f = float(round(197.0 / nx))
    origin = torch.tensor([98.0, 134.0, 72.0]).view(1, 3, 1, 1, 1)
    n_ax = torch.tensor([nx, ny, nz], dtype=torch.float32).view(1, 3, 1, 1, 1)
    g = ((Q + origin) / f - (f - 1) / (2 * f)) / (n_ax - 1) * 2 - 1  # (B, 3, S, S, S): x, y, z in [-1, 1]
    grid = g.permute(0, 2, 3, 4, 1).reshape(1, B * S, S, S, 3)
    tis = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    tis = tis.view(4, B, S, S, S)
    t1t, gm, wm, brain = tis[0], tis[1], tis[2], tis[3].clamp(0, 1)
    gm, wm = torch.minimum(gm, brain), torch.minimum(wm, brain)
    csf = (brain - gm - wm).clamp(0, 1)

    # -- tumour compartments (positives only)
    rad = sel["radius"].view(B, 1, 1, 1)
    lobes = _smooth3(gen, B, 2, 6, S)
    fine = _smooth3(gen, B, 2, 12, S)
    u = dist / (rad * (1 + sel["lobes"].view(B, 1, 1, 1) * lobes[:, 0]).clamp_min(0.4)) + 0.15 * fine[:, 0]
    ue = dist / (rad * sel["edema"].view(B, 1, 1, 1) * (1 + 0.3 * lobes[:, 1]).clamp_min(0.4)) + 0.2 * fine[:, 1]
    soft = lambda v, w=0.06: torch.sigmoid(v / w)  # noqa: E731
    inside = (brain > 0.5).float()
    core = soft(1 - u) * brain * pos
    nec_edge = sel["necrosis"].view(B, 1, 1, 1)
    rim_edge = nec_edge + sel["rim"].view(B, 1, 1, 1)
    necrosis = soft(nec_edge - u) * core * (nec_edge > 0)
    rim = soft(rim_edge - u) * core * (1 - necrosis) * (rim_edge > nec_edge)
    solid = core * (1 - necrosis - rim).clamp(0, 1)
    wm_affinity = (wm + 0.35 * gm).clamp(0, 1)
    edema = soft(1 - ue, 0.08) * (1 - core) * brain * soft(wm_affinity - 0.35, 0.1) * pos
    mask = (((core > 0.5) | (edema > 0.5)) & (inside > 0)).float()

    # -- confounders (both classes)
    coords = (X, Y, Z)
    spots = _blobs3(gen, coords, wm, count=14, radius=(1.5, 4.0))
    patches = _blobs3(gen, coords, wm_affinity, count=3, radius=(5.0, 11.0), p_present=0.6)
    csf_near = _blur3(csf[:, None], 4.0 / d)[:, 0]
    caps = (csf_near * (1 - csf) * brain * 2.0).clamp(0, 1) * torch.rand((B, 1, 1, 1), generator=gen) * 0.6
    vf = _smooth3(gen, B, 3, 7, S)
    vessels = torch.exp(-((vf[:, 0] / 0.08) ** 2) - (vf[:, 1] / 0.08) ** 2) * (gm + csf).clamp(0, 1)
    vessels = vessels * torch.rand((B, 1, 1, 1), generator=gen)
    blur_b = _blur3(brain[:, None], 3.0 / d)[:, 0]
    band = brain * torch.sigmoid((0.8 - blur_b) / 0.05)
    radial = torch.stack([X - _CENTER[0], Y - _CENTER[1], Z - _CENTER[2]], 0)
    radial = radial / radial.norm(dim=0, keepdim=True).clamp_min(1e-3)
    rim_art = torch.zeros_like(brain)
    for _ in range(2):
        v = torch.randn((B, 3), generator=gen)
        v = v / v.norm(dim=1, keepdim=True)
        cos = torch.einsum("bi,ixyz->bxyz", v, radial)
        width = 0.15 + 0.35 * torch.rand((B, 1, 1, 1), generator=gen)
        on = (torch.rand((B, 1, 1, 1), generator=gen) < 0.6).float()
        rim_art = rim_art + on * band * torch.exp(-(1 - cos) / width) * (0.4 + 0.8 * torch.rand((B, 1, 1, 1), generator=gen))

    # -- modalities
    contrast = sel["contrast"].view(B, 1, 1, 1) * (0.85 + 0.3 * torch.rand((B, 1, 1, 1), generator=gen))
    bias = _smooth3(gen, B, 4, 3, S) * 0.12
    comps = (necrosis, rim, solid, edema)
    tumor_w = sum(comps).clamp(0, 1)
    imgs = []
    for m, name in enumerate(CHANNELS):
        jit = sel["tissue_jitter"][:, m].view(B, 3, 1, 1, 1)
        tc, tg, tw = (torch.as_tensor(v) * jit[:, i] for i, v in enumerate(_TISSUE[name]))
        base = csf * tc + gm * tg + wm * tw
        if name in ("T1", "T1ce"):
            base = 0.6 * base + 0.4 * t1t * brain * 0.95  # template T1 texture
        tumor_v = sum(cm * v for cm, v in zip(comps, _TUMOR[name])) / tumor_w.clamp_min(1e-6)
        img = base + contrast * tumor_w * (tumor_v - base)
        if name in ("T2", "FLAIR"):
            amp = 0.35 if name == "T2" else 0.45
            img = img + amp * spots + (amp * 0.8) * patches
        else:
            img = img - 0.04 * spots
        if name == "FLAIR":
            img = img + caps
        if name == "T1ce":
            img = img + 0.55 * vessels
        img = img + {"T1": 1.0, "T1ce": 0.9, "T2": 0.5, "FLAIR": 0.8}[name] * rim_art
        img = img.clamp_min(0) ** sel["gamma"][:, m].view(B, 1, 1, 1)
        img = img * torch.exp(bias[:, m]) * brain
        sd = sel["noise"].view(B, 1, 1, 1)
        n1 = torch.randn((B, S, S, S), generator=gen) * sd
        n2 = torch.randn((B, S, S, S), generator=gen) * sd
        img = torch.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
        ref = torch.quantile(img.reshape(B, -1)[:, ::13], 0.995, dim=1).clamp_min(1e-3).view(B, 1, 1, 1)
        imgs.append(img / ref)
    return torch.stack(imgs, 1), mask


def _blobs3(gen, coords, where, *, count: int, radius: tuple[float, float], p_present: float = 0.8):
    """Sum of up to ``count`` Gaussian blobs per volume (``(B, S, S, S)``) at positions drawn from ``where``."""
    import torch

    B = where.shape[0]
    prob = where.reshape(B, -1).clamp_min(0) ** 2 + 1e-8
    idx = torch.multinomial(prob, count, replacement=True, generator=gen)  # (B, count)
    centre = [c.reshape(-1)[idx].view(B, count, 1, 1, 1) for c in coords]
    r = radius[0] + torch.rand((B, count, 1, 1, 1), generator=gen) * (radius[1] - radius[0])
    on = (torch.rand((B, count, 1, 1, 1), generator=gen) < p_present).float()
    amp = (0.5 + 0.7 * torch.rand((B, count, 1, 1, 1), generator=gen)) * on
    out = torch.zeros_like(where)
    for k in range(count):  # one blob at a time: (B, S, S, S) memory, not (B, count, S, S, S)
        d2 = sum((c[None] - cc[:, k]) ** 2 for c, cc in zip(coords, centre))
        out = out + amp[:, k] * torch.exp(-d2 / (2 * r[:, k] ** 2))
    return out.clamp(0, 1.3) * (where > 0.05)


def generate(out: str | os.PathLike[str], *, n: int = 200, size: int = 48, seed: int = 0) -> Path:
    """Write ``n`` synthetic brain volumes of ``size^3`` voxels into ``out`` (folder format, NPY).

    Args:
        out: destination folder.
        n: number of volumes (one per synthetic patient; labels balanced).
        size: side of the cube, in voxels (``176 / size`` mm voxels).
        seed: the only source of randomness (same arguments -> identical files).

    Returns:
        ``out``. Items are ``images/v<k>.npy`` ``(4, S, S, S)`` float32 (RAS index order) and
        ``masks/v<k>.npy`` ``(1, S, S, S)`` (empty for label 0).

    Raises:
        ValueError: ``n < 1`` or ``size < 8``.

    Example:
        >>> generate("brain3d", n=64, size=32, seed=0)  # doctest: +SKIP
    """
    import torch

    from .folder import FolderWriter

    if int(n) < 1 or int(size) < 8:
        raise ValueError(f"need n >= 1 and size >= 8; got n={n!r}, size={size!r}")
    n, size = int(n), int(size)
    rng = np.random.default_rng([seed, 0x3D])
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    P = _params(rng, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small element-wise ops: 1 thread is faster, and far faster on a busy machine
    try:
        vol = _template(2 if size <= 96 else 1)
        centres = _tumour_centres(rng, n, vol)
        writer = FolderWriter(
            out,
            class_names=CLASS_NAMES,
            channel_names=CHANNELS,
            meta={
                "name": "synthetic-brain-3d",
                "seed": seed,
                "size": size,
                "generator_version": _GENERATOR_VERSION,
                "axes": "RAS",
                "affine": voxel_to_mni(size).tolist(),
            },
        )
        chunk = max(1, int(2**20 // size**3))
        with torch.no_grad():
            for start in range(0, n, chunk):
                idx = np.arange(start, min(n, start + chunk))
                sel = {k: torch.as_tensor(np.asarray(v[idx]), dtype=torch.float32) for k, v in P.items()}
                imgs, masks = _render(gen, sel, torch.as_tensor(centres[idx], dtype=torch.float32), size, vol)
                for j, k in enumerate(idx):
                    label = int(P["label"][k])
                    m = masks[j].numpy()[None]
                    writer.add(
                        f"v{k:05d}",
                        image=imgs[j].numpy(),
                        label=label,
                        patient=f"brain3d{k:05d}",
                        mask=m if label else np.zeros_like(m),
                    )
    finally:
        torch.set_num_threads(threads)
    logger.info("synthetic-brain-3d: wrote %d volumes to %s", len(writer.rows), out)
    return writer.close()
