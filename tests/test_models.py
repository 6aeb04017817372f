import keras
import numpy as np
import pytest

from efficientnet_tf import build_feature_extractor, build_model, decode_block, encode_block, get_config, list_models
from efficientnet_tf.models.builder import block_plan, round_filters, round_repeats
from keras_reference import KERAS_CLASSES, keras_model, randomise_weights, write_legacy_h5

EXPECTED_MODELS = (
    [f"efficientnet-b{i}" for i in range(9)]
    + ["efficientnet-l2"]
    + [f"efficientnetv2-{s}" for s in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")]
    + [f"efficientnet-lite{i}" for i in range(5)]
)


def test_list_models_has_every_variant():
    assert sorted(list_models()) == sorted(EXPECTED_MODELS)
    assert set(list_models("lite")) == {f"efficientnet-lite{i}" for i in range(5)}


@pytest.mark.parametrize("bad, suggestion", [("efficientnet-b9", "efficientnet-b"), ("efficientnetv2_s", "efficientnetv2-s")])
def test_unknown_model_lists_closest_names(bad, suggestion):
    with pytest.raises(ValueError) as err:
        build_model(bad)
    message = str(err.value)
    assert repr(bad) in message and "did you mean" in message and suggestion in message


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_every_model_builds_runs_and_round_trips(name):
    config = get_config(name)
    for string in config.block_strings:
        assert encode_block(decode_block(string)) == string
    model = build_model(name, num_classes=5, input_shape=(32, 32, 3))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probs = model(images, training=False).numpy()
    assert probs.shape == (2, 5)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # training mode: stochastic depth and dropout active, still finite
    assert np.all(np.isfinite(model(images, training=True).numpy()))


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnetv2-b0", "efficientnet-lite0"])
def test_default_input_is_the_variant_resolution_and_other_sizes_work(name):
    config = get_config(name)
    assert build_model(name).input_shape == (None, config.resolution, config.resolution, 3)
    for size in (33, 112):
        model = build_model(name, input_shape=(size, size, 3), num_classes=3)
        assert model(np.zeros((1, size, size, 3), "float32")).shape == (1, 3)
    dynamic = build_model(name, input_shape=(None, None, 3), include_top=False, pooling="avg")
    assert dynamic(np.zeros((1, 40, 56, 3), "float32")).shape[0] == 1


@pytest.mark.parametrize("bad", [(16, 16, 3), (64, 64, 1), (64, 64)])
def test_bad_input_shape_is_rejected(bad):
    with pytest.raises(ValueError, match="input_shape"):
        build_model("efficientnet-b0", input_shape=bad)


def test_rounding_matches_reference_rules():
    assert round_filters(32, 1.0) == 32
    assert round_filters(16, 1.2) == 24  # 19.2 -> 16 is >10% down: guard adds 8
    assert round_filters(16, 1.2, guard=False) == 16  # keras/automl V2 rule
    assert round_filters(1280, 1.4) == 1792
    assert round_filters(3, 1.0) == 8  # never below the divisor
    assert round_repeats(3, 1.4) == 5 and round_repeats(1, 3.1) == 4


def test_stochastic_depth_rises_linearly_over_all_blocks():
    plan = block_plan(get_config("efficientnet-b0"))
    assert len(plan) == 16
    rates = [b.drop_rate for b in plan]
    np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])


def test_lite_keeps_stem_head_and_outer_stages_unscaled():
    model = build_model("efficientnet-lite4", input_shape=(64, 64, 3))
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280
    names = [l.name for l in model.layers]
    assert "block1a_project_conv" in names and "block1b_project_conv" not in names
    assert "block7a_project_conv" in names and "block7b_project_conv" not in names
    assert not any("se_" in n for n in names)
    assert model.get_layer("stem_activation").get_config()["activation"] == "relu6"


def test_se_width_comes_from_block_input_filters():
    model = build_model("efficientnet-b0", input_shape=(64, 64, 3))
    # block2a: input 16, expanded 96 -> SE reduce int(16 * 0.25) = 4, not 96 * 0.25
    assert model.get_layer("block2a_se_reduce").filters == 4
    assert model.get_layer("block2a_se_expand").filters == 96


def test_keras_layer_names():
    v1 = {l.name for l in build_model("efficientnet-b0").layers}
    for name in ["stem_conv_pad", "stem_conv", "block1a_dwconv", "block2a_dwconv_pad", "block2b_se_reduce",
                 "block2b_drop", "block2b_add", "top_conv", "top_bn", "avg_pool", "top_dropout", "predictions"]:
        assert name in v1
    v2 = {l.name for l in build_model("efficientnetv2-s").layers}
    assert {"block1a_project_activation", "block4a_dwconv2", "block2a_expand_conv"} <= v2
    assert not any(n.endswith("_pad") for n in v2)


@pytest.mark.parametrize("pooling, shape", [(None, (None, 2, 2, 1280)), ("avg", (None, 1280)), ("max", (None, 1280))])
def test_no_top_pooling(pooling, shape):
    model = build_model("efficientnet-b0", input_shape=(64, 64, 3), include_top=False, pooling=pooling)
    assert model.output_shape == shape


# The last block at each stride (2, 4, 8, 16, 32) and its width, read off the papers' stage
# tables (V1/Lite stages 1, 2, 3, 5, 7; V2-S stages 1, 2, 3, 5, 6 with 2/4/4/9/15 repeats).
# A block with a skip connection ends in `_add`; one that changes width ends in `_project_bn`.
FEATURE_LAYERS = {
    "efficientnet-b0": (["block1a_project_bn", "block2b_add", "block3b_add", "block5c_add", "block7a_project_bn"],
                        [16, 24, 40, 112, 320]),
    "efficientnetv2-s": (["block1b_add", "block2d_add", "block3d_add", "block5i_add", "block6o_add"],
                         [24, 48, 64, 160, 256]),
    "efficientnet-lite0": (["block1a_project_bn", "block2b_add", "block3b_add", "block5c_add", "block7a_project_bn"],
                           [16, 24, 40, 112, 320]),
}


@pytest.mark.parametrize("name", list(FEATURE_LAYERS))
def test_feature_extractor_gives_five_strides(name, tmp_path):
    layer_names, widths = FEATURE_LAYERS[name]
    images = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    if name in KERAS_CLASSES:
        # Independent path: keras.applications' own network, with random weights that ours loads.
        reference = keras_model(name, (128, 128, 3), include_top=False)
        model = build_feature_extractor(name, input_shape=(128, 128, 3),
                                        weights=write_legacy_h5(reference, str(tmp_path / "notop.h5")))
    else:
        # keras.applications has no Lite: read the named layers of our own network instead.
        model = build_feature_extractor(name, input_shape=(128, 128, 3))
        randomise_weights(model, images)  # else BN is ~identity: a block's conv would pass for its BN
        reference = model
    probe = keras.Model(reference.input, [reference.get_layer(n).output for n in layer_names])
    expected = probe(images, training=False)
    features = model(images, training=False)
    assert [tuple(f.shape) for f in features] == [(2, 128 // s, 128 // s, w) for s, w in zip((2, 4, 8, 16, 32), widths)]
    for layer_name, got, want in zip(layer_names, features, expected):
        want = want.numpy()
        assert np.all(np.isfinite(got.numpy()))
        # the previous block has the same shape at 4 of the 5 strides: values tell them apart
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=5e-4 * np.abs(want).max(), err_msg=layer_name)


@pytest.mark.parametrize("name", list(FEATURE_LAYERS))
def test_feature_info_is_recorded_while_building(name):
    """Every model carries its feature endpoints, recorded by the builder (not found by name)."""
    layer_names, widths = FEATURE_LAYERS[name]
    model = build_model(name, include_top=False, input_shape=(64, 64, 3))
    assert [(f.stride, f.layer, f.channels) for f in model.feature_info] == list(
        zip((2, 4, 8, 16, 32), layer_names, widths))
    extractor = build_feature_extractor(name, input_shape=(64, 64, 3), strides=(8, 32))
    assert [(f.stride, f.layer) for f in extractor.feature_info] == [(8, layer_names[2]), (32, layer_names[4])]
    with pytest.raises(ValueError, match="no feature map at stride 64"):
        build_feature_extractor(name, input_shape=(64, 64, 3), strides=(64,))


def test_embedding_head_is_l2_normalized():
    model = build_model("efficientnet-b0", input_shape=(64, 64, 3), include_top=False, embedding_dim=128)
    out = model(np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")).numpy()
    assert out.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="include_top=False"):
        build_model("efficientnet-b0", embedding_dim=128)
