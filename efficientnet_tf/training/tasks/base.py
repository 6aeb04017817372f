"""What a run learns, as an object the trainer is given (as keras-hub composes a task).

The trainer calls its task at named points: the head the model is built with, the forward pass
and loss of a training step, the evaluation and its history columns, and the final report. The
trainer knows neither classification nor embeddings: a new task is a new subclass registered in
`training.tasks`, and the loop does not change."""

from __future__ import annotations

import keras
import tensorflow as tf

from efficientnet_tf.training.config import TrainConfig


def sparse_labels(labels):
    """Class ids from sparse or (smoothed / mixed) one-hot labels."""
    return tf.argmax(labels, axis=-1, output_type=tf.int32) if labels.shape.rank == 2 else tf.cast(labels, tf.int32)


def is_correct(labels, logits):
    """1.0 per example whose highest logit is its class, else 0.0."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, sparse_labels(labels)), tf.float32)


class Task:
    """The base: a task that trains the model's own outputs as logits. Subclasses override what
    differs; every method the trainer calls is here, with what it means.

    Args:
        config: the run's settings (the task reads its own section, and the loss settings).
    """

    name = ""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.model: keras.Model | None = None
        self.loss_model: keras.Model | None = None  # what a training step calls: the model, or a part of it

    # ---------------------------------------------------------------- building

    def head_arguments(self) -> dict:
        """`build_model` arguments for this task's head (default: the classifier)."""
        return {}

    @property
    def one_hot(self) -> bool:
        """Whether the training pipeline feeds one-hot labels."""
        return False

    def attach(self, model: keras.Model, num_classes: int) -> None:
        """Called once, inside the strategy's scope, after the model is built: create whatever
        the loss owns (its variables are trained and checkpointed with the run)."""
        self.model = self.loss_model = model

    def loss_variables(self) -> list:
        """Trainable variables the loss owns, besides the model's."""
        return []

    def checkpointed(self) -> dict:
        """Objects saved in the run's checkpoints besides the model, optimizer and EMA, by name."""
        return {}

    # ---------------------------------------------------------------- a training step

    def forward(self, images, labels, training: bool, model: keras.Model | None = None):
        """(logits the loss takes, logits whose argmax is the prediction); `model`: the loss
        model's forward pass (default: `loss_model`; the int8-aware epochs pass theirs)."""
        outputs = (model or self.loss_model)(images, training=training)
        return outputs, outputs

    def per_example_loss(self, labels, logits):
        raise NotImplementedError

    # ---------------------------------------------------------------- evaluation and reports

    def begin_fit(self) -> None:
        """Before `fit()` trains: forget what an earlier fit kept."""

    def evaluate(self, trainer, image_size: int | None = None, split: str = "eval", **options) -> dict:
        """The task's metrics on `split` at `image_size` (default: the run's evaluation size)."""
        raise NotImplementedError

    def validate(self, trainer, last_epoch: bool) -> dict:
        """An epoch's validation (`last_epoch`: the run's last)."""
        return self.evaluate(trainer)

    def validation_columns(self, validation: dict | None) -> dict:
        """history.csv's validation columns from `validate`'s report (None: not validated)."""
        raise NotImplementedError

    def epoch_summary(self, row: dict) -> str:
        """The validation part of an epoch's console line."""
        raise NotImplementedError

    def final_report(self, trainer) -> tuple[dict, dict]:
        """(the report `fit` returns and writes, the arrays its plots are drawn from: keyword
        arguments of `RunDir.write_eval_report` and the plot hooks)."""
        raise NotImplementedError

    def report_lines(self, report: dict, weights: str) -> list[str]:
        """What the console says of the final report; `weights`: which weights it is of."""
        return []

    def run_info(self, source) -> dict:
        """run.json entries of this task's own."""
        return {}
