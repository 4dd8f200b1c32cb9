"""``synthetic-pet``: whole-body coronal PET maximum-intensity-projection phantoms.

Each phantom is a body silhouette (head, neck, trunk, pelvis, arms, legs) with physiological FDG
uptake: brain (high), myocardium (highly variable, from invisible to very bright), liver, spleen,
kidneys, bladder (very high, variable), bowel loops, and low background muscle/soft tissue. The
classes reproduce the paper's PET task: **normal**, **mild** and **severe** altered muscular uptake
in forearms, biceps, deltoids and thighs, with class balance about 77 / 20 / 3 % (exact counts per
``n``). The mask marks the altered muscle regions (empty for normal).

Confounders: injection-site hot spots in one arm, variable myocardial and bowel uptake, mild
normal-range muscle heterogeneity, body size / arm pose variation, Poisson-like noise and PET blur.
The image then goes through the same 256-bin histogram equalization as ``dualattn prepare pet``
(:func:`dualattn.data.pet.histogram_equalize`), so the synthetic set looks like prepared real data.
Rows run head to feet; columns patient right to left.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["generate", "CLASS_NAMES", "CLASS_FRACTIONS", "MUSCLES"]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("normal", "mild", "severe")
CLASS_FRACTIONS: tuple[float, ...] = (0.77, 0.20, 0.03)
MUSCLES: tuple[str, ...] = (
    "deltoid_r", "deltoid_l", "biceps_r", "biceps_l", "forearm_r", "forearm_l", "thigh_r", "thigh_l",
)


def class_counts(n: int) -> list[int]:
    """Items per class for ``n`` items: largest-remainder rounding of :data:`CLASS_FRACTIONS`."""
    raw = [f * n for f in CLASS_FRACTIONS]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(3), key=lambda k: raw[k] - counts[k], reverse=True)
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts


def _capsule(X, Y, a, b, r):
    """Signed distance to capsules from a=(ax, ay) to b=(bx, by), radius r; all (B, 1, 1) tensors."""
    import torch

    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    t = (((X - ax) * vx + (Y - ay) * vy) / (vx**2 + vy**2).clamp_min(1e-9)).clamp(0, 1)
    return torch.sqrt((X - ax - t * vx) ** 2 + (Y - ay - t * vy) ** 2) - r


def _ellipse(X, Y, c, rx, ry):
    import torch

    cx, cy = c
    return (torch.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2) - 1) * torch.minimum(rx, ry)


def _render(gen, labels: np.ndarray, rng: np.random.Generator, size: int):
    """Images (B, S, S) in SUV-like units and masks (B, S, S) for one chunk."""
    import torch

    B = len(labels)
    S = size
    def u(lo: float, hi: float, k: int | None = None):
        """Uniform draws: (B, 1, 1) per phantom, or (B, k) when k is given."""
        if k is None:
            return torch.as_tensor(rng.uniform(lo, hi, B), dtype=torch.float32).view(B, 1, 1)
        return torch.as_tensor(rng.uniform(lo, hi, (B, k)), dtype=torch.float32)

    coords = (torch.arange(S, dtype=torch.float32) + 0.5) / S
    Y = coords.view(1, S, 1).expand(B, S, S)
    X = coords.view(1, 1, S).expand(B, S, S)
    sc, sx, dy = u(0.9, 1.05), u(0.85, 1.15), u(-0.02, 0.02)
    X = (X - 0.5) / (sc * sx) + 0.5  # body frame: centre column 0.5
    Y = (Y - 0.5 - dy) / sc + 0.5
    edge = 0.6 / S / sc  # soft edge ~ half a pixel
    soft = lambda d: torch.sigmoid(-d / edge)  # noqa: E731
    c = lambda x, y: (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))  # noqa: E731

    abd = u(0.0, 0.05)  # arm abduction (horizontal offset at the hands)
    limb = u(0.85, 1.15)
    shapes: dict[str, object] = {}
    shapes["head"] = _ellipse(X, Y, c(0.5, 0.075), u(0.05, 0.058), u(0.06, 0.068))
    shapes["neck"] = _capsule(X, Y, c(0.5, 0.12), c(0.5, 0.17), u(0.026, 0.032))
    shapes["trunk"] = _ellipse(X, Y, c(0.5, 0.33), u(0.13, 0.16), u(0.19, 0.21))
    shapes["pelvis"] = _ellipse(X, Y, c(0.5, 0.50), u(0.12, 0.145), u(0.08, 0.095))
    muscles: dict[str, object] = {}
    for side, sgn in (("r", -1.0), ("l", 1.0)):
        sh = c(0.5 + sgn * 0.155, 0.195)
        elbow = (0.5 + sgn * (0.19 + abd * 0.5), torch.as_tensor(0.37))
        wrist = (0.5 + sgn * (0.205 + abd), torch.as_tensor(0.53))
        muscles[f"deltoid_{side}"] = _ellipse(X, Y, sh, 0.038 * limb, 0.045 * limb)
        muscles[f"biceps_{side}"] = _capsule(X, Y, (0.5 + sgn * 0.17, torch.as_tensor(0.22)), elbow, 0.027 * limb)
        muscles[f"forearm_{side}"] = _capsule(X, Y, elbow, wrist, 0.022 * limb)
        shapes[f"hand_{side}"] = _ellipse(X, Y, (wrist[0], wrist[1] + 0.04), 0.018 * limb, 0.035 * limb)
        hip = (0.5 + sgn * 0.07, torch.as_tensor(0.54))
        knee = (0.5 + sgn * 0.08, torch.as_tensor(0.76))
        muscles[f"thigh_{side}"] = _capsule(X, Y, hip, knee, 0.055 * limb)
        shapes[f"calf_{side}"] = _capsule(X, Y, knee, (0.5 + sgn * 0.085, torch.as_tensor(0.95)), 0.04 * limb)
    body = torch.stack([soft(d) for d in (*shapes.values(), *muscles.values())]).amax(0)

    # physiological uptake (SUV-like), combined by maximum (it is a MIP)
    img = body * u(0.5, 0.9)
    brain = soft(_ellipse(X, Y, c(0.5, 0.07), u(0.04, 0.046), u(0.047, 0.055)))
    img = torch.maximum(img, brain * u(6.0, 11.0))
    heart_c = c(0.53, 0.27)
    outer = soft(_ellipse(X, Y, heart_c, u(0.04, 0.05), u(0.035, 0.045)))
    inner = soft(_ellipse(X, Y, heart_c, u(0.02, 0.028), u(0.016, 0.024)))
    myo = torch.as_tensor(rng.lognormal(0.6, 0.8, B), dtype=torch.float32).clamp(0.8, 14).view(B, 1, 1)
    img = torch.maximum(img, (outer - inner).clamp(0, 1) * myo + inner * 1.6)
    img = torch.maximum(img, soft(_ellipse(X, Y, c(0.43, 0.37), u(0.07, 0.09), u(0.045, 0.055))) * u(2.0, 3.0))  # liver
    img = torch.maximum(img, soft(_ellipse(X, Y, c(0.585, 0.36), u(0.025, 0.032), u(0.03, 0.04))) * u(1.6, 2.4))  # spleen
    for sgn in (-1.0, 1.0):
        img = torch.maximum(img, soft(_ellipse(X, Y, c(0.5 + sgn * 0.06, 0.42), u(0.018, 0.024), u(0.03, 0.038))) * u(3.0, 8.0))
    img = torch.maximum(img, soft(_ellipse(X, Y, c(0.5, 0.545), u(0.022, 0.035), u(0.018, 0.03))) * u(8.0, 30.0))  # bladder
    for _ in range(4):  # bowel loops
        bx, by = u(0.42, 0.58), u(0.40, 0.50)
        img = torch.maximum(img, soft(_capsule(X, Y, (bx, by), (bx + u(-0.04, 0.04), by + u(-0.03, 0.03)), u(0.006, 0.012))) * u(1.0, 4.5))

    # muscles: normal heterogeneity for everyone; altered uptake for mild / severe
    mask = torch.zeros((B, S, S))
    base = u(0.7, 1.15, len(MUSCLES))
    n_alt = np.where(labels == 2, rng.integers(5, 9, B), np.where(labels == 1, rng.integers(2, 6, B), 0))
    factors = np.ones((B, len(MUSCLES)), np.float32)
    for i in range(B):
        groups = rng.permutation(len(MUSCLES))[: n_alt[i]]
        lo, hi = ((1.5, 2.6) if labels[i] == 1 else (2.6, 5.0))
        factors[i, groups] = rng.uniform(lo, hi, len(groups))
    factors_t = torch.as_tensor(factors)
    for k, name in enumerate(MUSCLES):
        shrink = 0.004
        region = soft(muscles[name] + shrink)
        texture = 1 + 0.15 * torch.randn((B, 1, 4, 4), generator=gen)
        texture = torch.nn.functional.interpolate(texture, size=(S, S), mode="bicubic", align_corners=False)[:, 0]
        uptake = region * base[:, k].view(B, 1, 1) * factors_t[:, k].view(B, 1, 1) * texture
        img = torch.maximum(img, uptake)
        mask = torch.maximum(mask, (region > 0.5).float() * (factors_t[:, k] > 1).float().view(B, 1, 1))
    # injection site hot spot (confounder) in about a third of all patients
    inj = torch.as_tensor(rng.random(B) < 0.35, dtype=torch.float32).view(B, 1, 1)
    ix = 0.5 + torch.as_tensor(rng.choice([-1.0, 1.0], B), dtype=torch.float32).view(B, 1, 1) * (0.19 + abd * 0.5)
    iy = u(0.34, 0.42)
    img = torch.maximum(img, inj * soft(_ellipse(X, Y, (ix, iy), u(0.006, 0.012), u(0.006, 0.012))) * u(4.0, 20.0))

    # PET blur + Poisson-like noise
    from .synthetic_brain import _gauss_blur

    img = _gauss_blur(img[:, None], (0.8 * S / 128, 0.8 * S / 128))[:, 0]
    noise = torch.randn((B, S, S), generator=gen) * torch.sqrt(img.clamp_min(0) * 0.02 + 1e-4) * u(0.6, 1.4)
    img = (img + noise).clamp_min(0)
    return img, mask


def generate(out: str | os.PathLike[str], *, n: int = 600, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` coronal PET MIP phantoms (``size x size``, 1 channel, equalized) into ``out``.

    Args:
        out: destination folder.
        n: number of phantoms (one per synthetic patient); classes by :func:`class_counts`.
        size: side in pixels.
        seed: the only source of randomness.

    Returns:
        ``out``.
    """
    import torch

    from .folder import FolderWriter
    from .pet import histogram_equalize

    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16; got n={n}, size={size}")
    rng = np.random.default_rng([seed, 0x9E7])
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    counts = class_counts(n)
    labels = rng.permutation(np.repeat(np.arange(3), counts))
    writer = FolderWriter(out, class_names=CLASS_NAMES, channel_names=["PET"], meta={"name": "synthetic-pet", "seed": seed, "size": size})
    chunk = max(4, int(2**20 // (size * size)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small element-wise ops: 1 thread is faster, and far faster on a busy machine
    try:
        _write_chunks(writer, gen, rng, labels, size, chunk, histogram_equalize)
    finally:
        torch.set_num_threads(threads)
    logger.info("synthetic-pet: wrote %d phantoms (%s) to %s", n, dict(zip(CLASS_NAMES, counts)), out)
    return writer.close()


def _write_chunks(writer, gen, rng, labels, size, chunk, histogram_equalize) -> None:
    import torch

    n = len(labels)
    with torch.no_grad():
        for start in range(0, n, chunk):
            lab = labels[start : start + chunk]
            imgs, masks = _render(gen, lab, rng, size)
            for j in range(len(lab)):
                i = start + j
                eq = histogram_equalize(imgs[j].numpy(), bins=256)
                writer.add(f"pet{i:05d}", image=eq[None], label=int(lab[j]), patient=f"pet{i:05d}", mask=masks[j].numpy()[None] if lab[j] else np.zeros((1, size, size), np.uint8))
