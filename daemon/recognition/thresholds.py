"""Threshold names, as model.json spells them: ``far_1e-03`` (the pair score at which one
impostor pair in a thousand passes), ``door_far_1e-03`` (the score at which one stranger's knock
in a thousand opens a door, from ``twinlock evaluate --door``) and ``eer``.

Why one module: the trainer writes these names and the door reads them back to pick a threshold
and its target rate; one spelling, formatted and parsed here, keeps the two in step.
"""

from __future__ import annotations

PAIR_PREFIX = "far_"
DOOR_PREFIX = "door_far_"
EER = "eer"


def rate_key(far: float) -> str:
    """A false-accept rate as the names and JSON reports spell it: ``1e-03``."""
    return f"{far:.0e}"


def pair_name(far: float) -> str:
    """``far_1e-03`` for 1e-3: a pair threshold's name."""
    return PAIR_PREFIX + rate_key(far)


def door_name(far: float) -> str:
    """``door_far_1e-03`` for 1e-3: a door-level threshold's name."""
    return DOOR_PREFIX + rate_key(far)


def _rate(name: str, prefix: str) -> float | None:
    if not name.startswith(prefix):
        return None
    try:
        return float(name.removeprefix(prefix))
    except ValueError:
        return None


def pair_rate(name: str) -> float | None:
    """The rate a ``far_<rate>`` name stands for; None for any other name (``eer``, a door's)."""
    return _rate(name, PAIR_PREFIX)


def door_rate(name: str) -> float | None:
    """The impostor accept rate per knock a ``door_far_<rate>`` name stands for, else None."""
    return _rate(name, DOOR_PREFIX)


#: the pair threshold a model uses when model.json names none
DEFAULT_PAIR = pair_name(1e-3)
