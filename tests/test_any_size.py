"""Any input size is the same network: a model built for `(None, None, 3)` computes what the model
built at that fixed size computes, odd sides included; and deep graphs build from any caller."""

import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import build_model, get_config, list_models
from efficientnet_tf.models.layers import SamePadding2D
from isolated import run_isolated

V1_AND_LITE = [name for name in list_models() if get_config(name).keras_style_padding]
# ceil(n / 2**j) for j = 0..4 (the sides the five strided convs see) has a parity pattern fixed by
# n mod 32, so the sizes 32..63 meet every pattern of odd and even sides there is.
EVERY_PARITY_PATTERN = list(range(32, 64))
LARGER_SIZES = [136, 225, 240, 255, 300]


def _max_relative_difference(reference, other):
    return float(np.abs(reference - other).max() / np.abs(reference).max())


def _fixed_and_dynamic_logits(name, sizes, seed=0):
    """Logits of the dynamic-shape model and of a fixed-shape model per size, same weights."""
    dynamic = build_model(name, input_shape=(None, None, 3), num_classes=7, classifier_activation=None)
    weights = dynamic.get_weights()
    rng = np.random.default_rng(seed)
    for size in sizes:
        fixed = build_model(name, input_shape=(size, size, 3), num_classes=7, classifier_activation=None)
        fixed.set_weights(weights)
        images = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
        yield size, fixed(images, training=False).numpy(), dynamic(images, training=False).numpy()


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_same_padding_equals_tensorflow_same_for_every_side(kernel_size):
    """Our padding + 'valid' conv against TF's own 'SAME' conv, sides 1..600, size unknown to the graph."""
    kernel = tf.random.stateless_normal((kernel_size, kernel_size, 1, 1), seed=(1, 2))
    pad = SamePadding2D(kernel_size, 2)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32)])
    def both(image):
        ours = tf.nn.depthwise_conv2d(pad(image), kernel, strides=[1, 2, 2, 1], padding="VALID")
        reference = tf.nn.depthwise_conv2d(image, kernel, strides=[1, 2, 2, 1], padding="SAME")
        return ours, reference

    for side in range(1, 601):
        image = tf.random.stateless_uniform((1, side, side + 1, 1), seed=(side, 0))
        ours, reference = both(image)
        assert ours.shape == reference.shape, side
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=0, atol=1e-5, err_msg=f"side {side}")


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-lite0"])
def test_dynamic_model_equals_fixed_model_at_every_odd_and_even_side(name):
    for size, fixed, dynamic in _fixed_and_dynamic_logits(name, EVERY_PARITY_PATTERN + LARGER_SIZES):
        assert _max_relative_difference(fixed, dynamic) <= 1e-5, (name, size)


@pytest.mark.slow
@pytest.mark.parametrize("name", V1_AND_LITE)
def test_every_v1_and_lite_variant_dynamic_equals_fixed(name):
    """Each variant at two odd sides (L2, 480M parameters: at one). In a process of its own: the
    big variants would leave the test worker gigabytes larger."""
    run_isolated(check_dynamic_equals_fixed, name)


def check_dynamic_equals_fixed(name):
    # What a side changes is the padding of the five stride-2 convolutions, which every V1 and Lite
    # variant has at the same places with the same kernels: every parity pattern and the large
    # sides are checked on B0 and Lite0 above. Per variant, what is left to check is its own
    # layers (width, depth, Lite's fixed stem and head) on a dynamic graph: two odd sides do it.
    # Each size costs a fixed-size build (L2: 480M parameters, 30 s), so L2 gets one.
    sizes = [33] if name == "efficientnet-l2" else [33, 47]
    for size, fixed, dynamic in _fixed_and_dynamic_logits(name, sorted(set(sizes))):
        assert _max_relative_difference(fixed, dynamic) <= 1e-5, (name, size)


def test_dynamic_model_names_the_minimum_size():
    model = build_model("efficientnet-lite0", input_shape=(None, None, 3), num_classes=3)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="at least 32x32"):
        model(np.zeros((1, 17, 17, 3), "float32"))
    serve = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 32x32"):
        serve(tf.zeros((1, 17, 40, 3)))
    assert serve(tf.zeros((1, 32, 40, 3))).shape == (1, 3)


@pytest.mark.parametrize("count", [np.int64(5), np.int32(5), 5])
def test_num_classes_accepts_any_integer_type(count):
    model = build_model("efficientnet-lite0", num_classes=count, input_shape=(32, 32, 3))
    assert model.output_shape == (None, 5)


@pytest.mark.parametrize("bad", [0, 2.0, True, "5", np.float32(5)])
def test_num_classes_rejects_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_model("efficientnet-lite0", num_classes=bad, input_shape=(32, 32, 3))


def _nested(depth, build):
    return build() if depth == 0 else _nested(depth - 1, build)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnetv2-xl", "efficientnet-l2"])
def test_deepest_models_build_from_a_deep_stack_under_the_default_limit(name):
    """~1,330 layers in one chain, built 300 frames deep and in a thread, limit left as found."""
    limit = sys.getrecursionlimit()
    assert limit <= 1000, "this test means Python's default recursion limit"
    model = _nested(300, lambda: build_model(name, num_classes=3, input_shape=(32, 32, 3)))
    assert len(model.layers) > 1000
    assert sys.getrecursionlimit() == limit

    built, errors = [], []

    def in_thread():
        try:
            built.append(_nested(300, lambda: build_model(name, include_top=False, input_shape=(32, 32, 3))))
        except Exception as err:  # reported below with its type
            errors.append(err)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert not errors, repr(errors)
    assert built[0].output_shape == (None, 1, 1, model.get_layer("top_conv").filters)
    assert sys.getrecursionlimit() == limit
