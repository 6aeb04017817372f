"""The embedding heads of a recognition backbone: how the embedding is made from the last feature map."""

from __future__ import annotations

from keras import layers

from efficientnet_tf.models.layers import DENSE_KERNEL_INITIALIZER, BlockStyle, batch_norm


def _embedding_head(x, head: str, embedding_dim: int, dropout_rate: float, style: BlockStyle, pooling=None):
    """The embedding from the last feature map, before any normalization ('gap': average pooling,
    or max pooling with pooling='max')."""
    if head == "gap":
        pool = layers.GlobalMaxPooling2D(name="max_pool") if pooling == "max" else layers.GlobalAveragePooling2D(
            name="avg_pool")
        x = pool(x)
    else:
        # iResNet's "E" output: every position keeps its own weights (no pooling), and the final
        # BN has no learned scale, as in insightface's recognition backbones.
        x = batch_norm(x, "embedding_feature_bn", style.bn_momentum, style.bn_epsilon)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    if head == "flatten":
        x = layers.Flatten(name="embedding_flatten")(x)
    x = layers.Dense(embedding_dim, kernel_initializer=DENSE_KERNEL_INITIALIZER, dtype="float32", name="embedding")(x)
    if head == "flatten":
        x = layers.BatchNormalization(momentum=style.bn_momentum, epsilon=style.bn_epsilon, scale=False,
                                      dtype="float32", name="embedding_bn")(x)
    return x


EMBEDDING_HEADS = ("gap", "flatten")


def check_embedding_head(head: str, input_shape) -> None:
    """ValueError (one line) for an unknown head, or a flatten head without a fixed input size."""
    if head not in EMBEDDING_HEADS:
        raise ValueError(f"embedding_head must be one of {', '.join(EMBEDDING_HEADS)}, got {head!r}")
    if head == "flatten" and None in tuple(input_shape)[:2]:
        raise ValueError(f"embedding_head='flatten' flattens a feature map of fixed size: it needs a fixed "
                         f"input_shape such as (112, 112, 3), got {tuple(input_shape)}")
