"""The sealed test draw: the data seed of the embedded datasets that only the demo's final evaluation reads.

A study that chooses a recipe, a threshold or a default by looking at a split of some data draw has read
that draw; numbers reported from the same draw afterwards are no longer an independent test. So the default
demo (whose numbers README and the report state) generates its embedded data with :data:`SEALED_DATA_SEED`,
and every study in ``benchmarks/`` generates with another seed, writes the seed it used into its JSON and
refuses the sealed one (:func:`refuse_sealed`). Seeds 0, 1 and 2 were read by the method and recipe studies
(rounds 1-5 of ``docs/method_study.md``); the sealed seed was chosen before any study ran on it.

Example:
    >>> from dualattn.data.sealed import SEALED_DATA_SEED, is_sealed, refuse_sealed
    >>> is_sealed(SEALED_DATA_SEED), is_sealed(0)
    (True, False)
    >>> refuse_sealed(0, who="a study")
    0
"""

from __future__ import annotations

__all__ = ["SEALED_DATA_SEED", "is_sealed", "refuse_sealed"]

#: The data seed of the default demo's draw of every embedded dataset (never used for a choice).
SEALED_DATA_SEED: int = 20261206


def is_sealed(seed: int | None) -> bool:
    """Whether ``seed`` is the sealed draw's data seed."""
    return seed is not None and int(seed) == SEALED_DATA_SEED


def refuse_sealed(seed: int, *, who: str = "this study") -> int:
    """``seed`` unchanged, or a ``ValueError`` when it is the sealed draw's seed.

    Args:
        seed: the data seed a study is about to generate with.
        who: the caller, named in the message.

    Raises:
        ValueError: ``seed`` is :data:`SEALED_DATA_SEED`.
    """
    if is_sealed(seed):
        raise ValueError(
            f"{who}: data seed {seed} is the sealed test draw of the default demo (dualattn.data.sealed); "
            "studies that choose anything must use another data seed"
        )
    return int(seed)
