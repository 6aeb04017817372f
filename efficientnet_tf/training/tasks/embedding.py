"""The recognition embedding: a margin loss over class centres while training; verification and
retrieval on held-out identities as its evaluation."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.training import verification
from efficientnet_tf.training.margin import ClassCentres, sparse_smoothed_cross_entropy
from efficientnet_tf.training.tasks.base import Task


class EmbeddingTask(Task):
    """An L2-normalised embedding (no classifier in the model), trained with ArcFace, CosFace or
    a softmax baseline over class centres that belong to the loss: trained and checkpointed
    with the run, never part of the exported model. Labels stay class ids (the loss smooths
    them without a one-hot)."""

    name = "embedding"

    def __init__(self, config):
        super().__init__(config)
        self.centres: ClassCentres | None = None
        self._embed_fn = None

    def head_arguments(self) -> dict:
        recognition = self.config.recognition
        return dict(include_top=False, embedding_dim=recognition.embedding_dim,
                    embedding_head=recognition.embedding_head)

    def attach(self, model: keras.Model, num_classes: int) -> None:
        recognition = self.config.recognition
        self.model = self.loss_model = model
        # The softmax baseline classifies the embedding before its unit normalization: on unit
        # vectors a classifier's logits are bounded by its weights' norms and barely learn.
        # (ArcFace and CosFace compare directions: the unit embedding.) Same layers and variables.
        if recognition.loss == "softmax":
            self.loss_model = keras.Model(model.inputs, model.get_layer("embedding_l2").input)
        self.centres = ClassCentres(num_classes, recognition.loss, recognition.margin, recognition.margin_scale,
                                    name="class_centres")
        self.centres.build((None, recognition.embedding_dim))

    def loss_variables(self) -> list:
        return list(self.centres.trainable_variables)

    def checkpointed(self) -> dict:
        return {"centres": self.centres}

    def forward(self, images, labels, training: bool, model: keras.Model | None = None):
        return self.centres((model or self.loss_model)(images, training=training), labels)

    def per_example_loss(self, labels, logits):
        return sparse_smoothed_cross_entropy(labels, tf.cast(logits, tf.float32), self.config.optimizer.label_smoothing)

    def embeddings(self, trainer, split: str = "eval", image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(L2-normalised embeddings [N, D], identity labels [N]) of every image of `split`
        (eval: the held-out identities), with the EMA weights when the run keeps them."""
        dataset = trainer.eval_dataset(split, image_size)
        if self._embed_fn is None:
            strategy = trainer.strategy

            def step(images, labels, weights):
                return tf.cast(self.model(images, training=False), tf.float32), labels, weights

            @tf.function(autograph=False)
            def run(images, labels, weights):
                # Every replica's (and worker's) batch, gathered: the metrics need all pairs.
                return [strategy.gather(r, axis=0) for r in strategy.run(step, args=(images, labels, weights))]

            self._embed_fn = run
        with trainer.evaluated_weights():
            embeddings, labels = [], []
            for images, batch_labels, weights in dataset:
                batch_embeddings, batch_labels, weights = (t.numpy() for t in self._embed_fn(
                    images, batch_labels, weights))
                real = weights > 0  # padding of the last batch
                embeddings.append(batch_embeddings[real])
                labels.append(batch_labels[real])
        return np.concatenate(embeddings), np.concatenate(labels).astype(np.int64)

    def evaluate(self, trainer, image_size: int | None = None, split: str = "eval", curves: bool = False) -> dict:
        """Verification over all positive pairs and a seeded sample of negative pairs (ROC AUC,
        TAR at FAR 1e-3 and 1e-2, best threshold accuracy) and leave-one-out 1-NN retrieval by
        cosine, on `split`'s identities (eval: held out from training); with `curves`, also
        what the ROC and similarity plots draw (key "curves")."""
        start = time.perf_counter()
        embeddings, labels = self.embeddings(trainer, split, image_size)
        elapsed = time.perf_counter() - start
        report, curve_data = verification.evaluate_embeddings(embeddings, labels, seed=self.config.run.seed or 0)
        report["images_per_sec"] = len(labels) / max(elapsed, 1e-9)  # "images" is the metrics' own count
        if curves:
            report["curves"] = curve_data
        return report

    def validation_columns(self, validation: dict | None) -> dict:
        """val_accuracy is held-out retrieval top-1 (there is no loss on identities never trained on)."""
        keys = ("roc_auc", "tar_at_far_1e-3", "tar_at_far_1e-2")
        validation = validation or dict.fromkeys(("retrieval_top1",) + keys, float("nan"))
        return {"val_accuracy": round(validation["retrieval_top1"], 6), "val_loss": float("nan"),
                **{f"val_{key}": round(validation[key], 6) for key in keys}}

    def epoch_summary(self, row: dict) -> str:
        return (f"held-out retrieval top-1 {row['val_accuracy']:.4f} ROC AUC {row['val_roc_auc']:.4f} "
                f"TAR@FAR=1e-2 {row['val_tar_at_far_1e-2']:.4f}")

    def final_report(self, trainer) -> tuple[dict, dict]:
        report = self.evaluate(trainer, curves=True)
        return report, {"curves": report.pop("curves")}

    def report_lines(self, report: dict, weights: str) -> list[str]:
        lines = [f"final eval on {report['identities']} held-out identities ({weights}): retrieval top-1 "
                 f"{report['retrieval_top1']:.4f}, ROC AUC {report['roc_auc']:.4f}, TAR@FAR=1e-3 "
                 f"{report['tar_at_far_1e-3']:.4f}, TAR@FAR=1e-2 {report['tar_at_far_1e-2']:.4f}, best threshold "
                 f"accuracy {report['best_accuracy']:.4f} at cosine {report['best_threshold']:.5g}"]
        negatives = report["negative_pairs"]
        if negatives < 1000:  # FAR moves in steps of 1/negatives
            lines.append(f"note: {negatives} negative pairs: FAR below 1/{negatives} cannot be measured, and TAR at "
                         "such a FAR is the share of positive pairs above every negative (more held-out identities "
                         "or images give more pairs)")
        return lines

    def run_info(self, source) -> dict:
        return {"eval_identities": list(source.eval_class_names)}
