"""The LR each optimizer step uses: the run's schedule times the stage's factor, or a constant."""

from __future__ import annotations

import tensorflow as tf


class StepLR:
    """Called with the optimizer's step counter, inside the step (a tensor). Create it in the
    strategy's scope: its factor and constant are variables the stages and the int8-aware
    epochs set between compiled loops.

    Args:
        schedule: the run's LR schedule (`resume_lr.RunSchedule` or `optim.WarmupSchedule`).
    """

    def __init__(self, schedule):
        self.schedule = schedule
        self.scale = tf.Variable(1.0, trainable=False, name="lr_scale")  # the stage's (a fine-tuning stage: 0.1)
        # > 0: the LR of every step instead of the schedule's (the quantization-aware epochs).
        self.constant = tf.Variable(0.0, trainable=False, name="lr_constant")

    def __call__(self, step):
        scheduled = self.schedule(step) * self.scale
        return tf.where(self.constant > 0, tf.cast(self.constant, scheduled.dtype), scheduled)
