"""Class logits for training recognition embeddings: ArcFace, CosFace and plain softmax.

The class-centre matrix lives here, in the training loss, not in the model: the exported
model outputs the embedding alone. Labels stay sparse (class ids): the margin is written into
each example's own logit with a scatter, so no dense one-hot of the batch is built, whatever
the number of identities. Formulas and defaults: docs/recognition.md.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

MARGIN_LOSSES = ("arcface", "cosface", "softmax")
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35, "softmax": 0.0}
DEFAULT_SCALE = 64.0


def check_margin(loss: str, margin: float, scale: float) -> None:
    """ValueError (one line) for an unknown loss, a margin outside [0, pi/2) or a scale <= 0."""
    if loss not in MARGIN_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(MARGIN_LOSSES)}, got {loss!r}")
    if not 0 <= margin < math.pi / 2:
        raise ValueError(f"margin must be in [0, pi/2) (ArcFace 0.5, CosFace 0.35), got {margin}")
    if not scale > 0:
        raise ValueError(f"margin scale must be > 0 (ArcFace and CosFace use 64), got {scale}")


def margin_logits(cosines, labels, loss: str, margin: float, scale: float):
    """Scaled logits with the margin on each example's own class.

    Args:
        cosines: [batch, classes] cosine of each embedding with each class centre.
        labels: [batch] int class ids.
        loss: 'arcface': s * cos(theta + m) for the true class (theta: its angle), falling back
            to s * (cos(theta) - m * sin(m)) where theta + m would pass pi, as insightface does, so
            that the logit keeps falling as theta grows; 'cosface': s * (cos(theta) - m).
        margin: m.
        scale: s, the logits' scale (every other class: s * cos).

    Returns:
        float32 [batch, classes] logits for softmax cross-entropy.
    """
    cosines = tf.cast(cosines, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    index = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)
    target = tf.gather_nd(cosines, index)
    if loss == "arcface":
        # cos(theta + m) = cos theta cos m - sin theta sin m; the floor keeps the gradient of
        # sin theta finite at theta = 0.
        sine = tf.sqrt(tf.maximum(1.0 - tf.square(target), 1e-10))
        with_margin = target * math.cos(margin) - sine * math.sin(margin)
        with_margin = tf.where(target > math.cos(math.pi - margin), with_margin, target - margin * math.sin(margin))
    elif loss == "cosface":
        with_margin = target - margin
    else:
        with_margin = target
    return scale * tf.tensor_scatter_nd_update(cosines, index, with_margin)


class ClassCentres(keras.layers.Layer):
    """Class centres (ArcFace, CosFace: unit vectors compared by cosine) or a softmax classifier
    (a Dense layer with bias) on top of embeddings; `call` returns (training logits with the
    margin, plain logits for accuracy). Create it inside the strategy scope: its variables are
    replicated and trained like the model's."""

    def __init__(self, num_classes: int, loss: str = "arcface", margin: float | None = None,
                 scale: float = DEFAULT_SCALE, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        if loss == "softmax" and margin:
            raise ValueError(f"margin applies to arcface and cosface; the softmax loss has none (got margin={margin})")
        margin = DEFAULT_MARGINS.get(loss, 0.0) if margin is None else float(margin)
        check_margin(loss, margin, scale)
        self.num_classes, self.loss, self.margin, self.scale = int(num_classes), loss, margin, float(scale)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.centres = self.add_weight(name="centres", shape=(dim, self.num_classes),
                                       initializer=keras.initializers.GlorotNormal(), trainable=True)
        self.bias = (self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros", trainable=True)
                     if self.loss == "softmax" else None)

    def call(self, embeddings, labels):
        embeddings = tf.cast(embeddings, tf.float32)
        if self.loss == "softmax":
            logits = tf.matmul(embeddings, self.centres) + self.bias
            return logits, logits
        cosines = tf.matmul(tf.math.l2_normalize(embeddings, axis=-1), tf.math.l2_normalize(self.centres, axis=0))
        return margin_logits(cosines, labels, self.loss, self.margin, self.scale), self.scale * cosines


def sparse_smoothed_cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with label smoothing, from class ids (no one-hot):
    (1 - e) * (logsumexp - z_y) + e * (logsumexp - mean z), as smoothed one-hot targets give."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    log_normalizer = tf.reduce_logsumexp(logits, axis=-1)
    true_logit = tf.gather(logits, labels, batch_dims=1)
    loss = log_normalizer - true_logit
    if label_smoothing > 0:
        loss = (1 - label_smoothing) * loss + label_smoothing * (log_normalizer - tf.reduce_mean(logits, axis=-1))
    return loss
