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


def _as_arrays(images) -> list[np.ndarray]:
    """A batch (array or tensor) as one array; a list or tuple as one array per image, which may
    differ in size."""
    if isinstance(images, (list, tuple)):
        return [np.asarray(image) for image in images]
    return [np.asarray(images)]


def looks_unit_scaled(images) -> bool:
    """True when non-empty float images have no value above 1 (0..255 data almost never does;
    an all-black batch does, and gets the one warning too).

    `images`: a batch (array or tensor), or a list of images of different sizes.
    """
    arrays = [array for array in _as_arrays(images) if array.size]
    if not arrays or not all(np.issubdtype(array.dtype, np.floating) for array in arrays):
        return False
    return bool(max(np.nanmax(array) for array in arrays) <= 1.0)


def warn_if_unit_scaled(images, where: str) -> bool:
    """Warn once per `where` (e.g. "Predictor") when `images` (see `looks_unit_scaled`) look
    scaled to 0..1.

    Returns whether the images look scaled, warned or not.
    """
    scaled = looks_unit_scaled(images)
    if scaled and where not in _warned_places:
        _warned_places.add(where)
        shapes = sorted({array.shape for array in _as_arrays(images)})
        warnings.warn(
            f"{where}: the images look scaled to 0..1 (max <= 1 over images of shape "
            f"{', '.join(map(str, shapes))}); efficientnet_tf models take raw RGB pixels in 0..255 and "
            "normalize inside the model. Multiply by 255 (or skip your own rescaling).",
            UnitRangeWarning,
            stacklevel=3,
        )
    return scaled


def reset_warnings() -> None:
    """Forget which places already warned (tests, or a notebook that wants to be told again)."""
    _warned_places.clear()
