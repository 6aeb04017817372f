"""int8_selective's search, on a calibration whose agreement per kept set is known in advance."""

import pytest

from efficientnet_tf.deploy.quantization import LayerError, keras_layer_name, selective_int8


class KnownCalibration:
    """Ten ops with known errors; a "model" is the list of tensors kept in float."""

    def __init__(self):
        errors = [0.3, 2.0, 0.29, 0.9, 0.31, 5.0, 0.28, 0.5, 0.27, 1.2]
        self.errors = [LayerError(i, "QUANTIZE" if i == 0 else "CONV_2D", f"t{i}", f"block{i}a_conv", e, 1.0)
                       for i, e in enumerate(errors)]
        self.quantized = []

    def layer_errors(self):
        return self.errors

    def quantize(self, keep_float):
        self.quantized.append(list(keep_float))
        return ",".join(keep_float).encode()


def agreement_when(needed: list[str], reached: float = 1.0, otherwise: float = 0.98):
    """Agreement `reached` once every tensor in `needed` is kept in float."""
    return lambda content: reached if set(needed) <= set(filter(None, content.decode().split(","))) else otherwise


def test_search_finds_the_shortest_float_tail_that_reaches_the_target():
    calibration = KnownCalibration()
    # Candidates in network order, QUANTIZE excluded: t1 ... t9; a tail of 3 is t7, t8, t9.
    content, report = selective_int8(calibration, agreement_when(["t7", "t8", "t9"]), target=0.995)
    assert content == b"t7,t8,t9"
    assert report["target_met"] and report["float_ops"] == 3 and report["quantized_ops"] == 6
    assert [e["tensor"] for e in report["kept_float"]] == ["t7", "t8", "t9"]
    assert report["first_float_layer"] == "block7a_conv"
    # 0, 1, 2, 4 (met), then bisect between 2 and 4: 3 (met).
    assert [s["float_ops"] for s in report["steps"]] == [0, 1, 2, 4, 3]
    assert [s["agreement"] for s in report["steps"]] == [0.98, 0.98, 0.98, 1.0, 1.0]
    assert calibration.quantized[:3] == [[], ["t9"], ["t8", "t9"]]
    assert all("t0" not in kept for kept in calibration.quantized)


def test_search_stops_at_once_when_int8_already_agrees():
    content, report = selective_int8(KnownCalibration(), agreement_when([]), target=0.995)
    assert content == b"" and report["float_ops"] == 0 and report["first_float_layer"] is None
    assert report["steps"] == [{"float_ops": 0, "first_float_layer": None, "agreement": 1.0}]


def test_an_unreachable_target_is_reported_with_the_best_model():
    def agreement(content):  # more float ops help a little, never enough
        return 0.95 + 0.001 * len(list(filter(None, content.decode().split(","))))

    content, report = selective_int8(KnownCalibration(), agreement, target=0.999)
    assert not report["target_met"]
    # All but one op at most: with every op in float it would not be an int8 model.
    assert report["float_ops"] == 8 and report["search_agreement"] == pytest.approx(0.958)
    assert "keeping the last 8 of 9 ops in float reached agreement 0.9580 < target 0.999" in report["reason"]


@pytest.mark.parametrize("target", [0, -1, 1.5])
def test_target_must_be_a_share(target):
    with pytest.raises(ValueError, match=r"target agreement must be in \(0, 1\]"):
        selective_int8(KnownCalibration(), agreement_when([]), target=target)


def test_max_float_ops_caps_the_tail():
    content, report = selective_int8(KnownCalibration(), agreement_when(["t5"]), target=0.995, max_float_ops=2)
    assert not report["target_met"] and report["float_ops"] == 0 and content == b""
    assert [s["float_ops"] for s in report["steps"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="max_float_ops must be >= 0, got -1"):
        selective_int8(KnownCalibration(), agreement_when([]), max_float_ops=-1)


def test_layer_names_come_from_keras_scopes():
    assert keras_layer_name("m_probabilities_1/block2a_se_excite_1/mul;m/block2a_se_excite/x") == "block2a_se_excite"
    assert keras_layer_name("m_probabilities_1/stem_conv_1/convolution;;m/stem_conv_pad_1/Pad") == "stem_conv"
    assert keras_layer_name("StatefulPartitionedCall_1:0") == "probabilities"
    assert keras_layer_name("StatefulPartitionedCall_1:0", "embedding_l2") == "embedding_l2"
    assert keras_layer_name("m_probabilities_1/top_conv_1") == "top_conv"
