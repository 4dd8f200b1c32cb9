"""``synthetic-brain``: BraTS-like hemisphere halves made from the real MNI152 template.

Anatomy: axial slices of the ICBM152 2009a template (T1 and grey/white-matter probability maps,
shipped inside nilearn's wheel; read with nibabel, never importing nilearn), varied per synthetic
patient by a random global affine, a smooth random deformation and tumor mass effect.

Four modalities T1 / T1ce / T2 / FLAIR are synthesised from tissue probabilities (CSF dark on
T1/FLAIR and bright on T2; grey matter darker than white matter on T1, brighter on T2), each with
its own random gamma, bias field and Rician noise level.

Gliomas: an irregular 3D-ish lesion per patient (random harmonics of the boundary plus a smooth
noise field), with necrotic core (dark T1/T1ce, bright T2), enhancing rim (bright T1ce only; absent
in ~25 % of "low-grade" lesions), solid tumor, and edema that spreads along white matter (bright
T2/FLAIR). Lesion contrast is drawn per patient from subtle to obvious.

Confounders, in BOTH halves: small bright white-matter spots on T2/FLAIR (and larger
non-enhancing FLAIR patches), curvilinear vessels bright on T1ce, bright rim artefacts along the
brain edge (incomplete skull stripping). So a raw channel used as a heatmap localises the tumor
poorly (see ``docs/data.md`` for the measured AP), while a model that combines channels and shape
can. ``generate(..., confounders=False)`` leaves them out (the ``synthetic-brain-easy`` dataset): the
same patients, tumors, contrasts and noise, with nothing bright but the lesion.

Items (as in the paper): each slice is cut at the midline into two halves, each resized to
``size x size``: the half holding the tumor is label 1 with its whole-tumor mask, the other half
label 0 with an empty mask. Both halves of a slice, and the several slices of one synthetic
patient, share the patient id (so splits never leak a patient).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["generate", "CHANNELS", "template_path"]

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")
CLASS_NAMES: tuple[str, ...] = ("no_tumor", "tumor")

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Field of view of one full axial slice (mm). Each half covers FOV_LR/2 x FOV_AP.
_FOV_AP = 196.0
_FOV_LR = 168.0
_CENTER_Y = -18.0  # MNI y of the brain's AP centre
_SLICES_PER_PATIENT = 4

# Tissue intensities per modality: (csf, gm, wm) before gamma/bias/noise.
_TISSUE = {
    "T1": (0.22, 0.55, 0.85),
    "T1ce": (0.25, 0.58, 0.85),
    "T2": (1.00, 0.62, 0.42),
    "FLAIR": (0.12, 0.62, 0.48),
}
# Tumor compartments per modality: (necrosis, enhancing rim, solid tumor, edema).
_TUMOR = {
    "T1": (0.18, 0.48, 0.40, 0.55),
    "T1ce": (0.20, 1.45, 0.52, 0.60),
    "T2": (1.00, 0.70, 0.78, 0.80),
    "FLAIR": (0.50, 0.70, 0.76, 0.80),
}


def template_path(kind: str = "t1") -> Path:
    """Path of an MNI152 template file inside the installed nilearn wheel (not importing nilearn).

    Args:
        kind: ``"t1"``, ``"gm"`` or ``"wm"``.

    Raises:
        FileNotFoundError: nilearn (or its bundled template) is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("synthetic-brain needs the MNI152 template shipped with nilearn: pip install nilearn")
    base = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    path = base / _TEMPLATE_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template not found at {path}; reinstall nilearn")
    return path


@functools.lru_cache(maxsize=2)
def _template(factor: int):
    """Template volume ``(1, 4, Z, Y, X)`` float32 (t1, gm, wm, brain), avg-pooled by ``factor``."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    vols = [np.asarray(nib.load(str(template_path(k))).dataobj, dtype=np.float32) / 255.0 for k in ("t1", "gm", "wm")]
    brain = (vols[0] > 0.02).astype(np.float32)
    vol = np.stack([*vols, brain])  # (4, X, Y, Z) RAS, 1 mm, origin at voxel (98, 134, 72)
    vol = torch.from_numpy(np.ascontiguousarray(vol.transpose(0, 3, 2, 1)))[None]  # (1, 4, Z, Y, X)
    if factor > 1:
        vol = F.avg_pool3d(vol, factor, stride=factor, ceil_mode=True)
    return vol.contiguous()


def _smooth_field(gen, b: int, ch: int, grid: tuple[int, int], out: tuple[int, int]):
    """Smooth random field (b, ch, *out): N(0,1) control points on ``grid`` upsampled bicubically."""
    import torch
    import torch.nn.functional as F

    ctrl = torch.randn((b, ch, *grid), generator=gen)
    return F.interpolate(ctrl, size=out, mode="bicubic", align_corners=True)


def _gauss_blur(x, sigma_px: tuple[float, float]):
    """Separable Gaussian blur of (B, C, H, W) with per-axis sigma in pixels (reflect padding)."""
    import torch
    import torch.nn.functional as F

    out = x
    for axis, s in enumerate(sigma_px):
        if s <= 0.3:
            continue
        r = max(1, int(math.ceil(3 * s)))
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        c = out.shape[1]
        if axis == 0:
            w = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), w, groups=c)
        else:
            w = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="replicate"), w, groups=c)
    return out


def _patient_params(rng: np.random.Generator, n_patients: int) -> dict[str, np.ndarray]:
    """Per-patient random draws (numpy, so the stream is stable across torch versions)."""
    p = n_patients
    contrast = 0.3 + 0.7 * rng.uniform(0.0, 1.0, p) ** 0.8  # subtle ... obvious
    return {
        "side": rng.integers(0, 2, p),  # 0: tumor in the left image half, 1: right
        "rot": np.radians(rng.uniform(-10, 10, p)),
        "scale_x": rng.uniform(0.88, 1.1, p),
        "scale_y": rng.uniform(0.9, 1.08, p),
        "shift": rng.uniform(-5, 5, (p, 2)),
        "deform_amp": rng.uniform(1.5, 5.0, p),
        "z_center": rng.uniform(-12, 42, p),
        "tumor_x": rng.uniform(14, 52, p),  # |x| of the centre (mm from midline)
        "tumor_y": rng.uniform(-70, 45, p) + _CENTER_Y,
        "radius": rng.uniform(9, 24, p),
        "radius_z": rng.uniform(0.8, 1.3, p),
        "edema": rng.uniform(1.1, 1.7, p),
        "necrosis": np.where(rng.random(p) < 0.35, 0.0, rng.uniform(0.2, 0.5, p)),
        "rim": np.where(rng.random(p) < 0.25, 0.0, rng.uniform(0.12, 0.3, p)),
        "contrast": contrast,
        "mass_effect": rng.uniform(0.0, 0.35, p),
        "gamma": rng.uniform(0.8, 1.25, (p, 4)),
        "tissue_jitter": rng.uniform(0.9, 1.1, (p, 4, 3)),
        "noise": rng.uniform(0.01, 0.05, p),
        "harm_amp": rng.uniform(0.0, 0.28, (p, 4)),
        "harm_phase": rng.uniform(0, 2 * np.pi, (p, 4)),
        "edema_amp": rng.uniform(0.05, 0.35, (p, 4)),
        "edema_phase": rng.uniform(0, 2 * np.pi, (p, 4)),
    }


def _render_chunk(
    gen, P: dict[str, np.ndarray], pid: np.ndarray, dz: np.ndarray, size: int, vol, confounders: bool = True
):
    """Render slices (B, 4, S, 2S) and whole-tumor masks (B, S, 2S) for patients ``pid``.

    ``confounders=False`` draws the confounders as usual (so every later random draw, and so the
    anatomy, tumors and noise, is the same as with them) and then leaves them out of the images.
    """
    import torch
    import torch.nn.functional as F

    B = len(pid)
    S, W = size, 2 * size
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    sel = {k: t(v[pid]) for k, v in P.items()}
    dy, dx = _FOV_AP / S, _FOV_LR / W  # mm per pixel (rows, cols)
    rows = _CENTER_Y + _FOV_AP / 2 - (torch.arange(S, dtype=torch.float32) + 0.5) * dy
    cols = _FOV_LR / 2 - (torch.arange(W, dtype=torch.float32) + 0.5) * dx  # radiological: image left = patient right
    Y = rows.view(1, S, 1).expand(B, S, W)
    X = cols.view(1, 1, W).expand(B, S, W)
    sign = 1.0 - 2.0 * sel["side"]  # side 0 -> left image half -> X > 0
    cx = (sign * sel["tumor_x"]).view(B, 1, 1)
    cy = sel["tumor_y"].view(B, 1, 1)
    zc = sel["z_center"] + t(dz)

    # -- geometry: output plane -> template (inverse global affine, deformation, mass effect)
    ddx, ddy = X - cx, Y - cy
    r2 = ddx**2 + ddy**2
    sig = (1.6 * sel["radius"]).view(B, 1, 1)
    pull = sel["mass_effect"].view(B, 1, 1) * torch.exp(-r2 / (2 * sig**2))
    Xm, Ym = X - pull * ddx, Y - pull * ddy
    xs, ys = Xm - sel["shift"][:, 0].view(B, 1, 1), Ym - _CENTER_Y - sel["shift"][:, 1].view(B, 1, 1)
    c, s = torch.cos(sel["rot"]).view(B, 1, 1), torch.sin(sel["rot"]).view(B, 1, 1)
    xt = (c * xs - s * ys) / sel["scale_x"].view(B, 1, 1)
    yt = (s * xs + c * ys) / sel["scale_y"].view(B, 1, 1) + _CENTER_Y
    deform = _smooth_field(gen, B, 2, (5, 5), (S, W)) * sel["deform_amp"].view(B, 1, 1, 1)
    xt, yt = xt + deform[:, 0], yt + deform[:, 1]
    zt = zc.view(B, 1, 1).expand(B, S, W)
    _, _, nz, ny, nx = vol.shape
    f = float(round(197.0 / nx))  # mm per template voxel (1 or the pooling factor)
    gx = ((xt + 98.0) / f - (f - 1) / (2 * f)) / (nx - 1) * 2 - 1
    gy = ((yt + 134.0) / f - (f - 1) / (2 * f)) / (ny - 1) * 2 - 1
    gz = ((zt + 72.0) / f - (f - 1) / (2 * f)) / (nz - 1) * 2 - 1
    grid = torch.stack([gx, gy, gz], dim=-1).view(1, B, S, W, 3)
    tis = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]  # (4, B, S, W)
    t1t, gm, wm, brain = tis[0], tis[1], tis[2], tis[3].clamp(0, 1)
    gm = torch.minimum(gm, brain)
    wm = torch.minimum(wm, brain)
    csf = (brain - gm - wm).clamp(0, 1)

    # -- tumor compartments (drawn in the output plane)
    rad_z = sel["radius"] * sel["radius_z"]
    r_slice = sel["radius"] * torch.sqrt((1 - (t(dz) / rad_z) ** 2).clamp_min(0.16))
    phi = torch.atan2(ddy, ddx)
    k = torch.arange(2, 6, dtype=torch.float32).view(1, 4, 1, 1)
    harm = (sel["harm_amp"].view(B, 4, 1, 1) * torch.cos(k * phi[:, None] + sel["harm_phase"].view(B, 4, 1, 1))).sum(1)
    eharm = (sel["edema_amp"].view(B, 4, 1, 1) * torch.cos(k * phi[:, None] + sel["edema_phase"].view(B, 4, 1, 1))).sum(1)
    noise = _smooth_field(gen, B, 2, (10, 20), (S, W))
    dist = torch.sqrt(r2)
    u = dist / (r_slice.view(B, 1, 1) * (1 + harm).clamp_min(0.4)) + 0.18 * noise[:, 0]
    ue = dist / (r_slice.view(B, 1, 1) * sel["edema"].view(B, 1, 1) * (1 + eharm).clamp_min(0.4)) + 0.22 * noise[:, 1]
    soft = lambda v, w=0.06: torch.sigmoid(v / w)  # noqa: E731
    core = soft(1 - u) * brain
    nec_edge = sel["necrosis"].view(B, 1, 1)
    rim_edge = nec_edge + sel["rim"].view(B, 1, 1)
    necrosis = soft(nec_edge - u) * core * (nec_edge > 0)
    rim = soft(rim_edge - u) * core * (1 - necrosis) * (rim_edge > nec_edge)
    solid = core * (1 - necrosis - rim).clamp(0, 1)
    wm_affinity = (wm + 0.35 * gm).clamp(0, 1)
    edema = soft(1 - ue, 0.08) * (1 - core) * brain * soft(wm_affinity - 0.35, 0.1)
    half = (X * sign.view(B, 1, 1) > 0).float()  # the tumor's own half
    necrosis, rim, solid, edema = (m * half for m in (necrosis, rim, solid, edema))
    mask = ((core * half > 0.5) | (edema > 0.5)).float()

    # -- confounders (both halves)
    spots = _blobs(gen, B, X, Y, wm, count=10, radius=(1.2, 3.5), dx=dx, dy=dy)  # WM hyperintensities
    patches = _blobs(gen, B, X, Y, wm_affinity, count=3, radius=(4.0, 11.0), dx=dx, dy=dy, p_present=0.6)
    csf_near = _gauss_blur(csf[:, None], (4.0 / dy, 4.0 / dx))[:, 0]
    caps = (csf_near * (1 - csf) * brain * 2.0).clamp(0, 1) * torch.rand((B, 1, 1), generator=gen) * 0.6
    vfield = _smooth_field(gen, B, 2, (7, 14), (S, W))
    vessels = torch.exp(-((vfield[:, 0] / 0.07) ** 2)) * (vfield[:, 1] > 0.35).float() * (gm + csf).clamp(0, 1)
    vessels = vessels * torch.rand((B, 1, 1), generator=gen) * 1.0
    blur_b = _gauss_blur(brain[:, None], (3.0 / dy, 3.0 / dx))[:, 0]
    band = brain * torch.sigmoid((0.8 - blur_b) / 0.05)
    ang = torch.atan2(Y - _CENTER_Y, X)
    rim_art = torch.zeros_like(brain)
    for _ in range(2):
        a0 = torch.rand((B, 1, 1), generator=gen) * 2 * math.pi
        width = 0.4 + torch.rand((B, 1, 1), generator=gen) * 1.2
        on = (torch.rand((B, 1, 1), generator=gen) < 0.6).float()
        sector = torch.exp(-((torch.remainder(ang - a0 + math.pi, 2 * math.pi) - math.pi) ** 2) / (2 * (width / 2) ** 2))
        rim_art = rim_art + on * band * sector * (0.4 + 0.8 * torch.rand((B, 1, 1), generator=gen))
    if not confounders:  # drawn above all the same: the random stream stays aligned with the default
        spots, patches, caps, vessels, rim_art = (torch.zeros_like(v) for v in (spots, patches, caps, vessels, rim_art))

    # -- modalities
    contrast = sel["contrast"].view(B, 1, 1) * (0.85 + 0.3 * torch.rand((B, 1, 1), generator=gen))
    bias = _smooth_field(gen, B, 4, (3, 4), (S, W)) * 0.12
    imgs = []
    comps = (necrosis, rim, solid, edema)
    for m, name in enumerate(CHANNELS):
        jit = sel["tissue_jitter"][:, m].view(B, 3, 1, 1)
        tc, tg, tw = (torch.as_tensor(v) * jit[:, i] for i, v in enumerate(_TISSUE[name]))
        base = csf * tc + gm * tg + wm * tw
        if name in ("T1", "T1ce"):
            base = 0.6 * base + 0.4 * t1t * brain * 0.95  # template T1 texture
        tumor_w = sum(comps).clamp(0, 1)
        tumor_v = sum(cm * v for cm, v in zip(comps, _TUMOR[name])) / tumor_w.clamp_min(1e-6)
        img = base + contrast * tumor_w * (tumor_v - base)
        if name in ("T2", "FLAIR"):
            amp = 0.35 if name == "T2" else 0.45
            img = img + amp * spots + (amp * 0.8) * patches
        else:
            img = img - 0.04 * spots
        if name == "FLAIR":
            img = img + caps  # periventricular hyperintensity
        if name == "T1ce":
            img = img + 0.55 * vessels
        rim_gain = {"T1": 1.0, "T1ce": 0.9, "T2": 0.5, "FLAIR": 0.8}[name]
        img = img + rim_gain * rim_art
        img = img.clamp_min(0) ** sel["gamma"][:, m].view(B, 1, 1)
        img = img * torch.exp(bias[:, m]) * brain
        sd = sel["noise"].view(B, 1, 1)
        n1 = torch.randn((B, S, W), generator=gen) * sd
        n2 = torch.randn((B, S, W), generator=gen) * sd
        img = torch.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
        ref = torch.quantile(img.reshape(B, -1)[:, :: 7], 0.995, dim=1).clamp_min(1e-3).view(B, 1, 1)
        imgs.append(img / ref)
    return torch.stack(imgs, 1), mask


def _blobs(gen, B, X, Y, where, *, count: int, radius: tuple[float, float], dx: float, dy: float, p_present: float = 0.8):
    """Sum of up to ``count`` Gaussian blobs per slice at positions drawn from the map ``where``."""
    import torch

    S, W = where.shape[1:]
    prob = where.reshape(B, -1).clamp_min(0) ** 2 + 1e-8
    idx = torch.multinomial(prob, count, replacement=True, generator=gen)
    yy = Y.reshape(B, -1).gather(1, idx).view(B, count, 1, 1)
    xx = X.reshape(B, -1).gather(1, idx).view(B, count, 1, 1)
    r = radius[0] + torch.rand((B, count, 1, 1), generator=gen) * (radius[1] - radius[0])
    on = (torch.rand((B, count, 1, 1), generator=gen) < p_present).float()
    amp = (0.5 + 0.7 * torch.rand((B, count, 1, 1), generator=gen)) * on
    d2 = (X[:, None] - xx) ** 2 + (Y[:, None] - yy) ** 2
    return (amp * torch.exp(-d2 / (2 * r**2))).sum(1).clamp(0, 1.3) * (where > 0.05)


def generate(
    out: str | os.PathLike[str],
    *,
    n: int = 1000,
    size: int = 64,
    seed: int = 0,
    slices_per_patient: int = _SLICES_PER_PATIENT,
    confounders: bool = True,
    lesion_contrast: float | None = None,
) -> Path:
    """Write ``n`` synthetic-brain halves of ``size x size`` pixels into ``out`` (folder format).

    Args:
        out: destination folder.
        n: number of items (two per slice; an odd ``n`` drops one half of the last slice).
        size: side of each square half, in pixels.
        seed: the only source of randomness (same arguments -> identical files).
        slices_per_patient: axial slices per synthetic patient.
        confounders: draw the confounders (white-matter spots and patches, periventricular FLAIR
            hyperintensity, vessels, rim artefacts) into both halves. False leaves them out and changes
            nothing else: the patients, tumors, masks, contrasts and noise are those of the same seed
            with them (``meta`` records ``"confounders": false``).
        lesion_contrast: every patient's lesion contrast (1: the most obvious of the default range,
            which draws it per patient from 0.3 to 1); None: drawn. The draws happen all the same, so
            nothing else changes (``meta`` records it when given).

    Returns:
        ``out``.

    Example:
        >>> generate("brain", n=200, size=64, seed=0)  # doctest: +SKIP
    """
    import torch

    from .folder import FolderWriter

    if n < 1 or size < 8 or slices_per_patient < 1:
        raise ValueError(f"need n >= 1, size >= 8, slices_per_patient >= 1; got n={n}, size={size}, slices_per_patient={slices_per_patient}")
    rng = np.random.default_rng([seed, 0x5B])
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    n_slices = (n + 1) // 2
    n_pat = math.ceil(n_slices / slices_per_patient)
    P = _patient_params(rng, n_pat)
    pid = np.repeat(np.arange(n_pat), slices_per_patient)[:n_slices]
    # slice offsets (mm) from each tumor's centre, spread within +-0.7 of its z-radius
    dz = (rng.uniform(-0.7, 0.7, n_slices) * P["radius"][pid] * P["radius_z"][pid]).astype(np.float32)
    keep_pos = rng.random() < 0.5  # which half the odd last item keeps
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small element-wise ops: 1 thread is faster, and far faster on a busy machine
    try:
        vol = _template(1 if size > 96 else 2)
    finally:
        torch.set_num_threads(threads)
    meta = {"name": "synthetic-brain", "seed": seed, "size": size, "generator_version": 3,
            "slices_per_patient": int(slices_per_patient)}
    if lesion_contrast is not None:
        if not 0 < float(lesion_contrast) <= 2:
            raise ValueError(f"lesion_contrast must be in (0, 2], got {lesion_contrast!r}")
        P["contrast"] = np.full_like(P["contrast"], float(lesion_contrast))
        meta["lesion_contrast"] = float(lesion_contrast)
    if not confounders:
        meta["confounders"] = False  # only when off: the default dataset's meta is unchanged
    writer = FolderWriter(out, class_names=CLASS_NAMES, channel_names=CHANNELS, meta=meta)
    chunk = max(8, int(2**21 // (size * size * 2)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small element-wise ops: 1 thread is faster, and far faster on a busy machine
    try:
        _write_chunks(writer, gen, P, pid, dz, size, vol, n, n_slices, keep_pos, chunk, bool(confounders))
    finally:
        torch.set_num_threads(threads)
    logger.info("synthetic-brain: wrote %d items for %d patients to %s", len(writer.rows), n_pat, out)
    return writer.close()


def _write_chunks(writer, gen, P, pid, dz, size, vol, n, n_slices, keep_pos, chunk, confounders=True) -> None:
    import torch

    with torch.no_grad():
        for start in range(0, n_slices, chunk):
            sl = slice(start, min(n_slices, start + chunk))
            imgs, masks = _render_chunk(gen, P, pid[sl], dz[sl], size, vol, confounders)
            # cut at the midline: each half is already size x size (the slice was rendered size x 2 size)
            halves = torch.cat([imgs[..., :size], imgs[..., size:]], 0)
            mhalves = torch.cat([masks[:, None, :, :size], masks[:, None, :, size:]], 0)
            b = imgs.shape[0]
            for j in range(b):
                g = start + j
                p = int(pid[g])
                side = int(P["side"][p])
                for h, half_name in ((0, "L"), (1, "R")):
                    label = int(h == side)
                    if g == n_slices - 1 and n % 2 == 1 and label != int(keep_pos):
                        continue
                    k = h * b + j
                    writer.add(
                        f"p{p:05d}_s{g:06d}_{half_name}",
                        image=halves[k].numpy(),
                        label=label,
                        patient=f"brain{p:05d}",
                        mask=mhalves[k].numpy() if label else np.zeros_like(mhalves[k].numpy()),
                    )
