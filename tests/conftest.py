"""Shared fixtures: global torch state is restored after every test; no downloads, no cwd reads."""

from __future__ import annotations

import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _restore_torch_state():
    import torch

    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)


@pytest.fixture
def seed() -> int:
    """Seed python, numpy and torch; return the seed."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture(autouse=True)
def _private_secrets_and_cache(tmp_path_factory):
    """Keys made by `prepare pet` and generated datasets go to temporary folders, never the user's home.

    A private MonkeyPatch, so a test calling ``monkeypatch.undo()`` on its own keeps these.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DUALATTN_SECRET_DIR", str(tmp_path_factory.mktemp("secrets")))
        mp.setenv("DUALATTN_CACHE", str(tmp_path_factory.getbasetemp() / "dualattn-cache"))
        yield
