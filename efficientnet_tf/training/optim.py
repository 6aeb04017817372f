"""Learning-rate schedules and optimizers of the EfficientNet recipes."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from efficientnet_tf.training.recipe import (
    OPTIMIZERS,
    PAPER_DECAY_EPOCHS,
    PAPER_DECAY_RATE,
    PAPER_WARMUP_EPOCHS,
    SCHEDULES,
)


def scaled_learning_rate(per_256: float, global_batch_size: int) -> float:
    """The papers quote LR per 256 images and scale it linearly with the batch."""
    return per_256 * global_batch_size / 256.0


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then exponential (staircase), cosine or constant. Never above `base_lr`.

    Optimizer step `s` (0-based) uses the schedule's value at the end of that step,
    `t = s + 1` steps into the run, so the first step trains and the last one (t = total_steps)
    gets the value the run is meant to end at. With W = warmup_epochs * steps_per_epoch and
    D = decay_epochs * steps_per_epoch, both in (possibly fractional) steps, T = total_steps:

    * warmup, t < W: `base_lr * t / W`, rising below the peak, which the ramp meets at t = W;
    * exponential: `base_lr * decay_rate ** floor(t / D)`, counted from the start of the run
      (as tensorflow/tpu) so that the last step is within one period of
      `decay_rate ** (T / D)`: 0.97 ** floor(350 / 2.4) = 1.21% of the peak for the papers'
      shape at any run length. A period shorter than one step is not clamped to one step
      (that made short runs end far above their promised fraction);
    * cosine: `min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2` with
      `p = clip((t - W) / (T - W), 0, 1)`: from the peak at t = W to min_lr at the last step;
    * constant: `base_lr`.

    The result is never below `min_lr`.

    Args:
        base_lr: the peak learning rate.
        steps_per_epoch: optimizer steps per epoch (>= 1).
        total_steps: optimizer steps of the whole run (>= 1).
        schedule: 'exponential', 'cosine' or 'constant' (after the warmup).
        warmup_epochs: linear warmup length in epochs (>= 0, fractions allowed).
        decay_rate: exponential: factor per decay period, in (0, 1].
        decay_epochs: exponential: epochs per decay period (> 0, fractions allowed).
        min_lr: floor of the learning rate (cosine anneals to it).
    """

    # A period boundary within this fraction of a period counts as crossed: float32 rounding of
    # t / D must not delay a decay by a whole period (e.g. 36 / 7.2 computed as 4.9999995).
    _BOUNDARY_TOLERANCE = 1e-4

    def __init__(self, base_lr, steps_per_epoch, total_steps, schedule="exponential",
                 warmup_epochs=PAPER_WARMUP_EPOCHS, decay_rate=PAPER_DECAY_RATE, decay_epochs=PAPER_DECAY_EPOCHS,
                 min_lr=0.0):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        checks = [
            (base_lr > 0, f"base_lr must be > 0, got {base_lr}"),
            (steps_per_epoch >= 1, f"steps_per_epoch must be >= 1, got {steps_per_epoch}"),
            (total_steps >= 1, f"total_steps must be >= 1, got {total_steps}"),
            (warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {warmup_epochs}"),
            (0 < decay_rate <= 1, f"decay_rate must be in (0, 1], got {decay_rate}"),
            (decay_epochs > 0, f"decay_epochs must be > 0, got {decay_epochs}"),
            (0 <= min_lr <= base_lr, f"min_lr must be in [0, base_lr={base_lr}], got {min_lr}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.schedule = schedule
        self.warmup_epochs = float(warmup_epochs)
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.min_lr = float(min_lr)

    @property
    def warmup_steps(self) -> float:
        return self.warmup_epochs * self.steps_per_epoch

    @property
    def decay_steps(self) -> float:
        return self.decay_epochs * self.steps_per_epoch

    def __call__(self, step):
        t = tf.cast(step, tf.float32) + 1.0  # the end of step `step`
        warmup_steps = self.warmup_steps
        if self.schedule == "exponential":
            periods = tf.floor(t / self.decay_steps + self._BOUNDARY_TOLERANCE)
            lr = self.base_lr * tf.pow(self.decay_rate, periods)
        elif self.schedule == "cosine":
            span = max(self.total_steps - warmup_steps, 1e-9)
            progress = tf.clip_by_value((t - warmup_steps) / span, 0.0, 1.0)
            lr = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + tf.cos(math.pi * progress))
        else:
            lr = tf.constant(self.base_lr)
        if warmup_steps > 0:
            lr = tf.where(t < warmup_steps, self.base_lr * t / warmup_steps, lr)
        return tf.maximum(lr, self.min_lr)

    def get_config(self):
        return dict(base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                    schedule=self.schedule, warmup_epochs=self.warmup_epochs, decay_rate=self.decay_rate,
                    decay_epochs=self.decay_epochs, min_lr=self.min_lr)


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class RMSpropTF(keras.optimizers.RMSprop):
    """RMSprop as TF1's `tf.train.RMSPropOptimizer`, which the papers' recipe was tuned with.

    Keras starts the squared-gradient average at 0, so the first updates are ~lr*g/sqrt(0.1*g^2),
    about 3x lr in every coordinate, amplified 10x by momentum 0.9. TF1 starts it at 1, so early
    steps are ~lr*g. Epsilon sits inside the square root in both, as in the paper's code.
    """

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for velocity in self._velocities:
            if velocity is not None:
                velocity.assign(tf.ones_like(velocity))


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0, loss_scale: bool = False):
    """RMSprop as the papers (decay 0.9, momentum 0.9, eps 1e-3), SGD+Nesterov, or AdamW.

    RMSprop/SGD get weight decay as an L2 loss term (see `l2_loss`), as the papers; AdamW
    decays decoupled, skipping BN and bias variables.
    """
    if name == "rmsprop":
        opt = RMSpropTF(learning_rate, rho=0.9, momentum=0.9, epsilon=1e-3)
    elif name == "sgd":
        opt = keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    elif name == "adamw":
        opt = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if loss_scale:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def decays(variable) -> bool:
    """Weight decay applies to conv/dense kernels, not to BN parameters or biases."""
    name = variable.path if hasattr(variable, "path") else variable.name
    return not any(part in name for part in ("gamma", "beta", "bias", "moving_", "/mean", "/variance"))


def l2_loss(variables, weight_decay: float):
    if weight_decay <= 0:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables if decays(v)])
