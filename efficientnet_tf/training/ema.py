"""Exponential moving average of a model's weights, used for evaluation and export."""

from __future__ import annotations

import contextlib

import tensorflow as tf


class WeightAverage(tf.Module):
    """EMA of all model variables (weights and BN statistics, as tensorflow/tpu), with the
    (1 + n) / (10 + n) warm-up of tf.train.ExponentialMovingAverage so short runs still work."""

    def __init__(self, variables, decay: float):
        super().__init__(name="ema")
        self.decay = decay
        # Floats only: int counters and RNG states are not averaged.
        model_variables = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
        self._targets = lambda: model_variables  # not tracked: the checkpoint has them via the model
        self.shadows = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"ema_{i}")
                        for i, v in enumerate(model_variables)]
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_num_updates")

    def _values(self):
        return [v.value if hasattr(v, "value") else v for v in self._targets()]

    def reset(self):
        for shadow, value in zip(self.shadows, self._values()):
            shadow.assign(value)
        self.num_updates.assign(0)

    def update(self):
        n = tf.cast(self.num_updates.assign_add(1), tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, value in zip(self.shadows, self._values()):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.cast(value, shadow.dtype))

    def swap(self):
        """Exchange model and averaged values (call twice to undo)."""
        for shadow, variable in zip(self.shadows, self._targets()):
            current = tf.identity(variable.value if hasattr(variable, "value") else variable)
            variable.assign(shadow)
            shadow.assign(current)

    @contextlib.contextmanager
    def swapped(self):
        """Within: the averaged values in the model; the trained ones back afterwards, whatever happens."""
        self.swap()
        try:
            yield
        finally:
            self.swap()
