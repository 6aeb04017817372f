"""Learning-rate schedules and optimizers of the EfficientNet recipes."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

SCHEDULES = ("exponential", "cosine", "constant")
OPTIMIZERS = ("rmsprop", "sgd", "adamw")


def scaled_learning_rate(per_256: float, global_batch_size: int) -> float:
    """The papers quote LR per 256 images and scale it linearly with the batch."""
    return per_256 * global_batch_size / 256.0


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then exponential (staircase x0.97 every 2.4 epochs), cosine or constant."""

    def __init__(self, base_lr, steps_per_epoch, total_steps, schedule="exponential", warmup_epochs=5.0,
                 decay_rate=0.97, decay_epochs=2.4, min_lr=0.0):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.schedule = schedule
        self.warmup_epochs = float(warmup_epochs)
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.min_lr = float(min_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        if self.schedule == "exponential":
            decay_steps = max(self.decay_epochs * self.steps_per_epoch, 1.0)
            lr = self.base_lr * tf.pow(self.decay_rate, tf.floor(step / decay_steps))
        elif self.schedule == "cosine":
            span = max(self.total_steps - warmup_steps, 1.0)
            progress = tf.clip_by_value((step - warmup_steps) / span, 0.0, 1.0)
            lr = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + tf.cos(math.pi * progress))
        else:
            lr = tf.constant(self.base_lr)
        if warmup_steps > 0:
            lr = tf.where(step < warmup_steps, self.base_lr * (step + 1) / warmup_steps, lr)
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
