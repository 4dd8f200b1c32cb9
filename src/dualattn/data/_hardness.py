"""How hard is a dataset for explainers? Raw-channel heatmap AP and a one-epoch tiny-CNN check.

Used to calibrate the synthetic generators (numbers in ``docs/data.md``) and by the tests as a
regression guard: if a raw channel localised the lesion as well as a good explainer, the data
could not rank explainers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["raw_channel_ap", "tiny_cnn_balanced_accuracy"]


def raw_channel_ap(root: str | os.PathLike[str], *, max_items: int | None = None) -> dict[str, float]:
    """Mean over positive images (with a non-empty mask) of ``average_precision_score(mask, channel)``.

    Each raw channel (and its negative, since dark lesions count too: the better of the two is
    reported per channel) is used as a heatmap against the item's mask.

    Args:
        root: dataset folder.
        max_items: use at most this many positive items (first ones in ``labels.csv`` order).

    Returns:
        ``{channel_name: mean AP}`` plus ``"prevalence"`` (mean mask fraction: a random map's AP).
    """
    from sklearn.metrics import average_precision_score

    from .folder import FolderDataset

    ds = FolderDataset(root, normalize="none")
    names = ds.channel_names or [f"ch{c}" for c in range(ds.in_channels)]
    scores: dict[str, list[float]] = {n: [] for n in names}
    neg: dict[str, list[float]] = {n: [] for n in names}
    prev = []
    count = 0
    for i in range(len(ds)):
        if ds.labels[i] == 0 or ds._masks[i] is None:
            continue
        item = ds[i]
        y = item["mask"].numpy().ravel() > 0.5
        if not y.any():
            continue
        prev.append(float(y.mean()))
        for c, n in enumerate(names):
            x = item["image"][c].numpy().ravel()
            scores[n].append(average_precision_score(y, x))
            neg[n].append(average_precision_score(y, -x))
        count += 1
        if max_items is not None and count >= max_items:
            break
    out = {n: float(max(np.mean(scores[n]), np.mean(neg[n]))) for n in names}
    out["prevalence"] = float(np.mean(prev))
    return out


def tiny_cnn_balanced_accuracy(root: str | os.PathLike[str], *, epochs: int = 1, seed: int = 0, batch_size: int = 32) -> dict[str, Any]:
    """Train a 4-layer plain-torch CNN (BatchNorm, global max pool) for ``epochs`` on the train split; balanced accuracy on test.

    Returns:
        ``{"balanced_accuracy": float, "epochs": int, "n_train": int, "n_test": int}``.
    """
    import torch
    from sklearn.metrics import balanced_accuracy_score
    from torch import nn

    from .folder import FolderDataset

    torch.manual_seed(seed)
    train = FolderDataset(root, split="train", seed=seed, cache=True)
    test = FolderDataset(root, split="test", seed=seed, cache=True)
    c = train.in_channels
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(
        *block(c, 16), *block(16, 32), *block(32, 64), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, train.num_classes),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    for _ in range(epochs):
        net.train()
        for batch in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
    net.eval()
    preds, ys = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(test, batch_size=64):
            preds.append(net(batch["image"]).argmax(1))
            ys.append(batch["label"])
    y, p = torch.cat(ys).numpy(), torch.cat(preds).numpy()
    return {"balanced_accuracy": float(balanced_accuracy_score(y, p)), "epochs": epochs, "n_train": len(train), "n_test": len(test)}
