"""The trainer is composed: what a run learns is a task object it is given, and a third task needs
no change to the loop. Checked with a task written here (the Brier score: squared error of the
softmax against the one-hot label), whose loss and evaluation are recomputed with numpy."""

import ast
import pathlib

import numpy as np
import tensorflow as tf

from efficientnet_tf.training import TrainConfig, Trainer, read_history
from efficientnet_tf.training.hooks import TrainingHook
from efficientnet_tf.training.tasks import TASKS, ClassificationTask, EmbeddingTask, Task

LOOP = pathlib.Path(__file__).resolve().parent.parent / "efficientnet_tf" / "training" / "loop.py"


class BrierTask(Task):
    name = "brier"

    def per_example_loss(self, labels, logits):
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
        return tf.reduce_sum(tf.square(probabilities - tf.one_hot(labels, tf.shape(logits)[-1])), axis=-1)

    def evaluate(self, trainer, image_size=None, split="eval"):
        total, count = 0.0, 0.0
        with trainer.evaluated_weights():
            for images, labels, weights in trainer.eval_dataset(split, image_size):
                logits = trainer.model(images, training=False)
                total += float(tf.reduce_sum(self.per_example_loss(labels, logits) * weights))
                count += float(tf.reduce_sum(weights))
        return {"brier": total / count, "images": int(count)}

    def validation_columns(self, validation):
        return {"val_brier": round(validation["brier"], 6) if validation else float("nan")}

    def epoch_summary(self, row):
        return f"val_brier {row['val_brier']:.4f}"

    def final_report(self, trainer):
        return self.evaluate(trainer), {}

    def report_lines(self, report, weights):
        return [f"final Brier score ({weights}): {report['brier']:.4f}"]


class EpochRecorder(TrainingHook):
    def __init__(self):
        self.rows, self.ended = [], None

    def on_epoch_end(self, trainer, row):
        self.rows.append(dict(row))

    def on_fit_end(self, trainer, figures):
        self.ended = figures
        return []


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_a_third_task_trains_through_the_unchanged_loop(tmp_path, capsys):
    config = TrainConfig.from_settings(model="efficientnet-lite0", dataset="digits", model_dir=str(tmp_path / "run"),
                                       epochs=2, steps_per_epoch=2, batch_size=16, image_size=32, ema_decay=0.0,
                                       dropout_rate=0.0, drop_connect_rate=0.0, seed=0)
    recorder = EpochRecorder()
    trainer = Trainer(config, task=BrierTask(config), hooks=[recorder], strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))

    # A step's loss is the task's: numpy's Brier score of the model's outputs on the batch.
    images, labels = trainer.augmented_batch(16)
    logits = trainer.model(images, training=True).numpy()  # dropout 0: BN's batch statistics only
    expected = np.mean(np.sum((_softmax(logits) - np.eye(10)[labels]) ** 2, axis=-1))
    loss, _ = trainer.train_on_batch(images, labels)
    assert abs(loss - expected) < 1e-5 * max(1.0, expected)

    report = trainer.fit()
    # The report and the history's validation column are the task's, on the held-out 360 digits,
    # recomputed here from the final model's predictions.
    eval_images, eval_labels = [], []
    for batch_images, batch_labels, weights in trainer.eval_dataset():
        real = weights.numpy() > 0
        eval_images.append(batch_images.numpy()[real])
        eval_labels.append(batch_labels.numpy()[real])
    eval_images, eval_labels = np.concatenate(eval_images), np.concatenate(eval_labels)
    probabilities = _softmax(trainer.model.predict(eval_images, verbose=0))
    brier = np.mean(np.sum((probabilities - np.eye(10)[eval_labels]) ** 2, axis=-1))
    assert report["images"] == len(eval_labels) == 360
    assert abs(report["brier"] - brier) < 1e-4
    history = read_history(config.model_dir)
    assert [float(row["val_brier"]) for row in history] == [row["val_brier"] for row in recorder.rows]
    assert abs(float(history[-1]["val_brier"]) - brier) < 1e-4
    assert recorder.ended == {}  # the hook was given the task's figures (none here)
    assert f"final Brier score (weights): {report['brier']:.4f}" in capsys.readouterr().out


def test_the_loop_names_no_task():
    """What is task-specific lives in `training.tasks`: no name in the loop's code speaks of a
    task's labels, losses, metrics or heads (the two 0.x methods that forward to the embedding
    task aside)."""
    tree = ast.parse(LOOP.read_text())
    trainer = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Trainer")
    forwarded = {"embeddings", "evaluate_embeddings"}
    trainer.body = [node for node in trainer.body if not (isinstance(node, ast.FunctionDef) and node.name in forwarded)]
    names = set()
    for node in ast.walk(tree):
        names |= {getattr(node, field) for field in ("id", "attr", "name", "module") if isinstance(getattr(node, field, None), str)}
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {alias.name for alias in node.names}
    for word in ("embedding", "centres", "confusion", "crossentropy", "cross_entropy", "top1", "retrieval", "margin",
                 "classif", "verification"):
        assert not [name for name in names if word in name.lower()], word
    assert TASKS == {"classification": ClassificationTask, "embedding": EmbeddingTask}
