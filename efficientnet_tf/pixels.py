"""Checks on the pixels handed to the library: every model takes raw RGB in 0..255.

Images already scaled to 0..1 are the most common silent mistake (a run fed them put every image
in one class without a word), so each place that sees user data warns once when a whole batch
looks scaled.
"""

from __future__ import annotations

import warnings

import numpy as np


class UnitRangeWarning(UserWarning):
    """The images look scaled to 0..1, but the models expect 0..255 pixels."""


_warned_places: set[str] = set()


def looks_unit_scaled(images) -> bool:
    """True when a non-empty float batch has no value above 1 (0..255 data almost never does;
    an all-black batch does, and gets the one warning too)."""
    array = np.asarray(images)
    if array.size == 0 or not np.issubdtype(array.dtype, np.floating):
        return False
    return bool(np.nanmax(array) <= 1.0)


def warn_if_unit_scaled(images, where: str) -> bool:
    """Warn once per `where` (e.g. "Predictor") when `images` look scaled to 0..1.

    Returns whether the batch looks scaled, warned or not.
    """
    scaled = looks_unit_scaled(images)
    if scaled and where not in _warned_places:
        _warned_places.add(where)
        warnings.warn(
            f"{where}: the images look scaled to 0..1 (max <= 1 over a batch of {np.shape(images)}); "
            "efficientnet_tf models take raw RGB pixels in 0..255 and normalize inside the model. "
            "Multiply by 255 (or skip your own rescaling).",
            UnitRangeWarning,
            stacklevel=3,
        )
    return scaled


def reset_warnings() -> None:
    """Forget which places already warned (tests, or a notebook that wants to be told again)."""
    _warned_places.clear()
