import pytest

from efficientnet_tf import (
    BlockSpec,
    build_efficientnet,
    custom_config,
    decode_block,
    decode_blocks,
    encode_block,
    get_config,
    list_models,
)


def test_decode_v1_string():
    spec = decode_block("r2_k5_s22_e6_i24_o40_se0.25")
    assert spec == BlockSpec(
        repeats=2,
        kernel_size=5,
        strides=(2, 2),
        expand_ratio=6,
        input_filters=24,
        output_filters=40,
        se_ratio=0.25,
        fused=False,
        id_skip=True,
    )


def test_decode_v2_fused_string_with_one_digit_stride():
    spec = decode_block("r2_k3_s1_e1_i24_o24_c1")
    assert spec.fused and spec.strides == (1, 1) and spec.se_ratio is None
    assert spec.expand_ratio == 1 and spec.repeats == 2


def test_noskip_and_fractional_expand():
    spec = decode_block("r1_k3_s11_e0.5_i16_o16_noskip")
    assert spec.id_skip is False and spec.expand_ratio == 0.5
    assert encode_block(spec) == "r1_k3_s11_e0.5_i16_o16_noskip"


@pytest.mark.parametrize("name", list_models())
def test_every_shipped_string_round_trips(name):
    for string in get_config(name).block_strings:
        assert encode_block(decode_block(string)) == string


@pytest.mark.parametrize(
    "bad, token",
    [
        ("r1_k3_s11_e1_i32_o16_sx", "sx"),
        ("r1_k3_s11_e1_i32_o16_q5", "q5"),
        ("r1_k3_s11_e1_i-32_o16", "i-32"),
        ("r-1_k3_s11_e1_i32_o16", "r-1"),
        ("r1_k3_s11_e1_i32_o16_se1.5", "se1.5"),
        ("r1_k3_s31x_e1_i32_o16", "s31x"),
        ("r1_k3_s11_e1_i32_o16_c2", "c2"),
        ("r1_r2_k3_s11_e1_i32_o16", "r2"),
        ("r0_k3_s11_e1_i32_o16", "r0"),
        ("r1.5_k3_s11_e1_i32_o16", "r1.5"),
        ("r1_k3__s11_e1_i32_o16", ""),
    ],
)
def test_malformed_token_is_named_with_the_whole_string(bad, token):
    with pytest.raises(ValueError) as err:
        decode_block(bad)
    message = str(err.value)
    assert repr(token) in message and repr(bad) in message


def test_missing_keys_are_listed():
    with pytest.raises(ValueError, match=r"'k3_s11'.*r, e, i, o"):
        decode_block("k3_s11")


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_string_is_rejected(bad):
    with pytest.raises(ValueError, match="empty block string"):
        decode_block(bad)


def test_decode_blocks_accepts_a_whitespace_separated_string():
    specs = decode_blocks("r1_k3_s11_e1_i32_o16_se0.25 r2_k3_s22_e6_i16_o24_se0.25")
    assert [s.output_filters for s in specs] == [16, 24]


def test_custom_network_uses_the_registry_builder():
    config = custom_config(
        ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e4_i16_o24_se0.25", "r1_k3_s22_e4_i24_o40_c1"],
        width_coefficient=1.5,
        depth_coefficient=2.0,
        resolution=64,
        name="tiny",
    )
    model = build_efficientnet(config, num_classes=7)
    assert model.output_shape == (None, 7)
    # width 1.5: 16 -> 24, 24 -> 40 (rounded to 8), depth 2: 2 -> 4 repeats of stage 2
    assert model.get_layer("block1a_project_conv").filters == 24
    assert model.get_layer("block2d_project_conv").filters == 40
    assert model.get_layer("block3b_project_conv").filters == 64
    assert "block3a_expand_conv" in [l.name for l in model.layers]
    assert model.get_layer("block3a_expand_conv").kernel_size == (3, 3)  # fused: kxk expand


def test_custom_config_rejects_bad_strings():
    with pytest.raises(ValueError, match="'zz9'"):
        custom_config(["r1_k3_s11_e1_i32_o16_zz9"])
