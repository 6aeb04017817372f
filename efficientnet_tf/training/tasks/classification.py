"""The classifier: cross-entropy on the dataset's classes; top-1, top-5, loss and the confusion matrix."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.training.tasks.base import Task, is_correct, sparse_labels


class ClassificationTask(Task):
    """Logits over the dataset's classes (softmax at export), trained with cross-entropy:
    one-hot when labels are smoothed or mixed (mixup, cutmix), sparse otherwise."""

    name = "classification"

    def __init__(self, config):
        super().__init__(config)
        self._eval_fns = {}
        self.last_evaluation = None  # the run's last epoch's validation, with its confusion matrix

    @property
    def one_hot(self) -> bool:
        config = self.config
        return config.optimizer.label_smoothing > 0 or config.augment.mixes_labels or (
            config.progressive.stages > 1 and (config.progressive.max_mixup or 0) > 0)

    def per_example_loss(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        if self.one_hot:
            return keras.losses.categorical_crossentropy(labels, logits, from_logits=True,
                                                         label_smoothing=self.config.optimizer.label_smoothing)
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def begin_fit(self) -> None:
        self.last_evaluation = None

    def evaluate(self, trainer, image_size: int | None = None, split: str = "eval", confusion: bool = False) -> dict:
        """Top-1/top-5/loss on `split` ('eval', or 'train': the training images, preprocessed for
        evaluation) at `image_size`, with the EMA weights when the run keeps them; with
        `confusion`, also the confusion matrix (rows: true class) as a numpy array."""
        dataset = trainer.eval_dataset(split, image_size)
        if confusion not in self._eval_fns:
            self._eval_fns[confusion] = self._make_eval_fn(trainer.strategy, trainer.source.num_classes, confusion)
        eval_fn = self._eval_fns[confusion]
        num_classes = trainer.source.num_classes
        with trainer.evaluated_weights():
            totals = np.zeros(4)
            matrix = np.zeros((num_classes,) * 2, dtype=np.int64) if confusion else None
            start = time.perf_counter()
            for images, labels, weights in dataset:
                results = eval_fn(images, labels, weights)
                totals += np.array([float(t) for t in results[:4]])
                if confusion:
                    matrix += results[4].numpy().astype(np.int64)
            elapsed = time.perf_counter() - start
        loss, top1, top5, count = totals
        count = max(count, 1.0)
        report = {"top1": top1 / count, "top5": top5 / count, "loss": loss / count, "images": int(count),
                  "images_per_sec": count / max(elapsed, 1e-9)}
        if confusion:
            report["confusion_matrix"] = matrix
        return report

    def validate(self, trainer, last_epoch: bool) -> dict:
        """The run's last epoch's validation also counts the confusion matrix and is kept for the
        final report (one pass over the eval split less: a full ImageNet validation)."""
        if not last_epoch:
            return self.evaluate(trainer)
        self.last_evaluation = self.evaluate(trainer, confusion=True)
        return self.last_evaluation

    def validation_columns(self, validation: dict | None) -> dict:
        validation = validation or {"top1": float("nan"), "loss": float("nan")}
        return {"val_accuracy": round(validation["top1"], 6), "val_loss": round(validation["loss"], 6)}

    def epoch_summary(self, row: dict) -> str:
        return f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f}"

    def final_report(self, trainer) -> tuple[dict, dict]:
        # The last epoch validated the weights this report is of: its evaluation is the report.
        report = self.last_evaluation or self.evaluate(trainer, confusion=True)
        return report, {"confusion": report.pop("confusion_matrix")}

    def report_lines(self, report: dict, weights: str) -> list[str]:
        return [f"final eval ({weights}): top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f}, "
                f"loss {report['loss']:.4f}, {report['images_per_sec']:.1f} images/s"]

    def _make_eval_fn(self, strategy: tf.distribute.Strategy, num_classes: int, confusion: bool):
        k = min(5, num_classes)

        def step(images, labels, weights):
            logits = tf.cast(self.model(images, training=False), tf.float32)
            sparse = sparse_labels(labels)
            per_example = keras.losses.sparse_categorical_crossentropy(sparse, logits, from_logits=True)
            top1 = is_correct(sparse, logits)
            top5 = tf.cast(tf.math.in_top_k(sparse, logits, k), tf.float32)
            results = [tf.reduce_sum(per_example * weights), tf.reduce_sum(top1 * weights),
                       tf.reduce_sum(top5 * weights), tf.reduce_sum(weights)]
            if confusion:
                predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
                results.append(tf.math.confusion_matrix(sparse, predicted, num_classes, weights=weights, dtype=tf.float32))
            return results

        @tf.function(autograph=False)  # straight-line code: nothing for autograph to convert
        def run(images, labels, weights):
            results = strategy.run(step, args=(images, labels, weights))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return run
