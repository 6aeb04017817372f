"""Keras' process-wide state, set for a block of code and put back after.

Keras takes a layer's dtype from the global dtype policy when the layer is created, and draws
initial weights and dropout seeds from global random state. A library that set either for good
would change every model its caller builds afterwards (a notebook's next cell), so ours are
scoped.
"""

from __future__ import annotations

import contextlib
import random

import keras
import numpy as np
from keras.src.backend.common import global_state
# Where Keras keeps the generator that unseeded initializers and layers draw from.
from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR as _KERAS_SEED_GENERATOR


@contextlib.contextmanager
def dtype_policy(policy):
    """Keras' global dtype policy set to `policy` inside, restored after (even on error)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def random_seed(seed: int | None):
    """Models built inside get the weights (and dropout seeds) `keras.utils.set_random_seed(seed)`
    would give them; Python's, NumPy's and Keras' random state are put back after. None: no-op."""
    if seed is None:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras_generator = global_state.get_global_attribute(_KERAS_SEED_GENERATOR)
    random.seed(seed)
    np.random.seed(seed)
    global_state.set_global_attribute(_KERAS_SEED_GENERATOR, None)  # a new one, seeded from `random`
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(_KERAS_SEED_GENERATOR, keras_generator)
