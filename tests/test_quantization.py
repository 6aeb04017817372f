"""int8_selective's search, on a calibration whose agreement per kept set is known in advance."""

import pytest

from efficientnet_tf.deploy.int8_search import kept_float_summary, selective_int8
from efficientnet_tf.deploy.quantization import GraphOp, LayerError, keras_layer_name


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
    assert report["steps"] == [{"method": "float_tail", "float_ops": 0, "first_float_layer": None, "agreement": 1.0}]


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


def test_keep_float_ops_stay_float_and_the_tail_is_searched_on_top_of_them():
    calibration = KnownCalibration()
    # block1a and block2a (t1, t2: the head) named by the setting; the target needs t9 as well.
    content, report = selective_int8(calibration, agreement_when(["t1", "t2", "t9"]), target=0.995,
                                     keep_float="^block[12]a_")
    assert content == b"t1,t2,t9"
    assert report["target_met"] and report["float_ops"] == 3 and report["quantized_ops"] == 6
    assert report["float_by_setting"] == 2 and report["keep_float"] == "^block[12]a_"
    assert [e["tensor"] for e in report["kept_float"]] == ["t1", "t2", "t9"]  # network order
    assert report["first_float_layer"] == "block9a_conv"  # the searched tail's first layer
    assert [s["float_ops"] for s in report["steps"]] == [2, 3]  # the named ops alone, then a tail of 1
    assert all(kept[:2] == ["t1", "t2"] for kept in calibration.quantized)  # in every model tried
    assert kept_float_summary(report) == ("3 of 9 ops kept in float (2 named by keep_float '^block[12]a_'; "
                                          "the tail from block9a_conv on)")


def test_keep_float_ops_that_reach_the_target_alone_get_no_tail():
    content, report = selective_int8(KnownCalibration(), agreement_when(["t3"]), target=0.995, keep_float="block3a")
    assert content == b"t3" and report["float_ops"] == 1 and report["first_float_layer"] is None
    assert kept_float_summary(report) == "1 of 9 ops kept in float (1 named by keep_float 'block3a')"


def test_an_unreachable_target_with_keep_float_counts_the_tail_without_the_named_ops():
    def agreement(content):
        return 0.95 + 0.001 * len(list(filter(None, content.decode().split(","))))

    content, report = selective_int8(KnownCalibration(), agreement, target=0.999, keep_float="^block1a_")
    # 9 quantized ops; at most 8 in float: t1 by the setting and a tail of 7 from the other 8.
    assert not report["target_met"] and report["float_ops"] == 8 and content.startswith(b"t1,t3,")
    assert ("keeping the last 7 of 8 ops in float (besides the 1 named by keep_float) reached agreement 0.9580"
            in report["reason"])


@pytest.mark.parametrize("pattern, message", [
    ("^stem_", "keep_float '^stem_' matches none of the 9 quantized ops' layers (block1a_conv, block2a_conv, "
               "block3a_conv, block4a_conv, block5a_conv, block6a_conv, ... block9a_conv)"),
    ("conv", "keep_float 'conv' matches every quantized op: nothing would be int8"),
    ("block(", "keep_float 'block(' is not a regular expression: missing ), unterminated subpattern at position 5"),
])
def test_keep_float_must_name_some_but_not_all_ops(pattern, message):
    calibration = KnownCalibration()
    with pytest.raises(ValueError) as raised:
        selective_int8(calibration, agreement_when([]), keep_float=pattern)
    assert str(raised.value) == message and calibration.quantized == []  # refused before any conversion


class KnownHead:
    """Twelve graph ops; a "model" names its dynamic-range head and its float ops: 'h3|f:g5'."""

    def __init__(self):
        self.ops = [GraphOp(i, "CONV_2D", f"g{i};", f"block{i}a_conv") for i in range(12)]
        self.quantized = []

    def quantize(self, head, keep_float=()):
        self.quantized.append((head, [op.scope for op in keep_float]))
        return f"h{head}|f:{','.join(op.scope for op in keep_float)}".encode()


def head_of(content: bytes) -> int:
    text = content.decode()
    return int(text[1:text.index("|")]) if text.startswith("h") else -1


def test_a_dynamic_head_that_reaches_the_target_is_chosen_before_any_float_tail():
    calibration, head = KnownCalibration(), KnownHead()
    content, report = selective_int8(calibration, lambda c: 0.999 if head_of(c) >= 3 else 0.99, head=head)
    assert content == b"h3|f:" and report["method"] == "dynamic_head" and report["target_met"]
    # 0, 1, 2, 4 (met), then bisect between 2 and 4: 3 (met); the converter is never asked.
    assert [(s["method"], s["dynamic_ops"]) for s in report["steps"]] == [("dynamic_head", n) for n in (0, 1, 2, 4, 3)]
    assert calibration.quantized == []
    assert report["dynamic_ops"] == 3 and report["graph_ops"] == 12 and report["last_dynamic_layer"] == "block2a_conv"
    assert [op["tensor"] for op in report["dynamic_head"]] == ["g0;", "g1;", "g2;"]
    assert report["float_ops"] == 0 and report["quantized_ops"] == 9 and report["quantizer"] == "ai-edge-quantizer"
    assert kept_float_summary(report) == ("static int8 with the first 3 of 12 ops dynamic-range "
                                          "(to block2a_conv; ai-edge-quantizer)")


def test_the_float_tail_is_searched_when_no_head_up_to_the_limit_reaches_the_target():
    calibration, head = KnownCalibration(), KnownHead()

    def agreement(content):
        return 0.99 + 0.0001 * head_of(content) if head_of(content) >= 0 else agreement_when(["t8", "t9"])(content)

    content, report = selective_int8(calibration, agreement, head=head)
    assert content == b"t8,t9" and report["method"] == "float_tail" and report["target_met"]
    heads = [s["dynamic_ops"] for s in report["steps"] if s["method"] == "dynamic_head"]
    assert heads == [0, 1, 2, 4, 6]  # half of the 12 ops at most
    assert [s["float_ops"] for s in report["steps"] if s["method"] == "float_tail"] == [0, 1, 2]
    assert report["steps"][:len(heads)] == [s for s in report["steps"] if s["method"] == "dynamic_head"]


def test_an_unreachable_target_reports_both_searches_and_keeps_the_best_model():
    def agreement(content):  # the head of 6 is the best model seen
        return 0.97 + 0.003 * head_of(content) if head_of(content) >= 0 else 0.95

    content, report = selective_int8(KnownCalibration(), agreement, head=KnownHead(), max_dynamic_ops=6)
    assert content == b"h6|f:" and not report["target_met"] and report["method"] == "dynamic_head"
    assert report["search_agreement"] == pytest.approx(0.988)
    assert report["reason"].startswith("a dynamic-range head of up to 6 of 12 ops reached agreement 0.9880 and "
                                       "keeping the last 8 of 9 ops in float reached agreement 0.9500 < target 0.995")


def test_the_head_search_alone_never_asks_the_converter():
    calibration = KnownCalibration()
    content, report = selective_int8(calibration, lambda c: 0.99, head=KnownHead(), float_tail=False)
    assert calibration.quantized == [] and content == b"h0|f:" and not report["target_met"]
    assert kept_float_summary(report) == "static int8 throughout, 12 ops (ai-edge-quantizer)"
    assert report["reason"].startswith("a dynamic-range head of up to 6 of 12 ops reached agreement 0.9900 < target")
    with pytest.raises(ValueError, match="nothing to search"):
        selective_int8(calibration, lambda c: 0.99, float_tail=False)


def test_keep_float_layers_stay_float_in_every_head_tried():
    head = KnownHead()
    content, report = selective_int8(KnownCalibration(), lambda c: 1.0 if head_of(c) >= 1 else 0.9, head=head,
                                     keep_float="^block[7]a_")
    assert content == b"h1|f:g7;" and all(kept == ["g7;"] for _, kept in head.quantized)
    assert report["float_by_setting"] == 1 and [op["tensor"] for op in report["kept_float"]] == ["g7;"]
    assert report["float_ops"] == 1 and report["quantized_ops"] == 10
    assert kept_float_summary(report) == ("static int8 with the first 1 of 12 ops dynamic-range (to block0a_conv; "
                                          "1 named by keep_float '^block[7]a_' in float; ai-edge-quantizer)")


def test_max_dynamic_ops_must_not_be_negative():
    with pytest.raises(ValueError, match="max_dynamic_ops must be >= 0, got -2"):
        selective_int8(KnownCalibration(), agreement_when([]), head=KnownHead(), max_dynamic_ops=-2)


def test_layer_names_come_from_keras_scopes():
    assert keras_layer_name("m_probabilities_1/block2a_se_excite_1/mul;m/block2a_se_excite/x") == "block2a_se_excite"
    assert keras_layer_name("m_probabilities_1/stem_conv_1/convolution;;m/stem_conv_pad_1/Pad") == "stem_conv"
    assert keras_layer_name("StatefulPartitionedCall_1:0") == "probabilities"
    assert keras_layer_name("StatefulPartitionedCall_1:0", "embedding_l2") == "embedding_l2"
    assert keras_layer_name("m_probabilities_1/top_conv_1") == "top_conv"
