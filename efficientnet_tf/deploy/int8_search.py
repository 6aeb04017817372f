"""int8_selective: the search for the cheapest int8 model that keeps the float model's accuracy
(`selective_int8`), and what it chose, in words (`kept_float_summary`).

`selective_int8` searches for the cheapest int8 model that agrees with the float model on a target
share of search images, and reports every step. It first tries ai-edge-quantizer's static int8
with a dynamic-range head (`DynamicHeadInt8`: the first op, 2, 4, ... then bisecting, in int8
weights and float activations), then the converter's int8 with a float tail (the last op, 2, 4,
...). Why runs at the ends and not the ops with the largest own error: an op kept in float among
int8 ops hands its output to an int8 op, which quantizes it again, so the error it avoided comes
straight back; only a connected region keeps its tensors in float. A region at the input keeps
out the errors that every later op would inherit; the region that ends at the output keeps every
error it avoids out of the logits. (On EfficientNet-B0 and V2-B0, whose ops
all sit near the rounding level, keeping the worst ops in float moved agreement only once most of
the network was float: docs/deployment.md.) `keep_float` names layers to keep in float besides
what the searches choose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from efficientnet_tf.deploy.quantization import DynamicHeadInt8, Int8Calibration, LayerError

# Ops that move values between int8 and float: their "error" is the conversion, not an op to keep.
_NOT_CANDIDATES = ("QUANTIZE", "DEQUANTIZE")


def selective_int8(calibration: Int8Calibration, agreement: Callable[[bytes], float], target: float = 0.995,
                   max_float_ops: int | None = None, keep_float: str | None = None,
                   head: DynamicHeadInt8 | None = None, max_dynamic_ops: int | None = None,
                   float_tail: bool = True) -> tuple[bytes, dict]:
    """The int8 model that agrees with the float model on `target` of the search images, at the least
    cost found: first a dynamic-range head on ai-edge-quantizer's static int8 (`head`), then a float
    tail on the converter's int8 (`calibration`).

    Each search tries 0, 1, 2, 4, ... ops until `agreement(model) >= target`, then bisects for the
    fewest. The head search comes first because its ops are the cheap ones (narrow, early
    convolutions; docs/deployment.md); the tail search runs only when no head up to
    `max_dynamic_ops` reaches the target.

    Args:
        calibration: the converter's calibrated model.
        agreement: top-1 agreement of a TFLite model (bytes) with the float model, measured on
            images that are not the evaluation images.
        target: the agreement to reach, in (0, 1].
        max_float_ops: the most ops kept in float by the tail search (default: all but one; with
            every op in float it is no longer an int8 model).
        keep_float: a regular expression; the ops of every Keras layer whose name it matches
            (`re.search`, e.g. "^(rescaling|normalization|stem_)" for the input's scaling and the
            stem) stay in float in every model tried, and the searches add ops only if they do not
            already reach the target. It must match at least one of the converter's quantized ops.
            Its ops count towards `max_float_ops`, which then bounds the tail only.
        head: ai-edge-quantizer's int8 of the same model (`DynamicHeadInt8`); None: the tail
            search only.
        max_dynamic_ops: the longest head tried (default: half the graph's ops; a head's cost
            grows fast past the first blocks, docs/deployment.md, and the tail search follows).
        float_tail: whether the tail search runs when no head reaches the target.

    Returns:
        The chosen model and its report: target, whether it was met (and if not, why), `method`
        (`dynamic_head` or `float_tail`), the ops in dynamic-range int8 (`dynamic_head`) or kept in
        float (`kept_float`, in network order, with their own errors; `float_by_setting`: how many
        of them `keep_float` chose), and every step of both searches.
        The bisection assumes that a longer head or tail agrees at least as well; where the
        measured agreement is not monotonic the result meets the target, but is not necessarily
        the shortest that does.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target agreement must be in (0, 1], got {target}")
    if head is None and not float_tail:
        raise ValueError("nothing to search: no head (ai-edge-quantizer's int8) and no float tail")
    for name, value in (("max_float_ops", max_float_ops), ("max_dynamic_ops", max_dynamic_ops)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    quantized = sorted((e for e in calibration.layer_errors() if e.op not in _NOT_CANDIDATES), key=lambda e: e.index)
    forced = _matching_ops(quantized, keep_float) if keep_float is not None else []
    steps, models = [], {}

    def reached(method: str, count: int) -> float:
        return models[method, count][1]

    found = None
    if head is not None:
        named = [op for op in head.ops if keep_float is not None and re.search(keep_float, op.layer)]
        head_limit = min(len(head.ops) // 2 if max_dynamic_ops is None else max_dynamic_ops, len(head.ops) - 1)

        def try_head(count: int) -> float:
            if ("dynamic_head", count) not in models:
                content = head.quantize(count, named)
                models["dynamic_head", count] = (content, agreement(content))
                steps.append({"method": "dynamic_head", "dynamic_ops": count,
                              "last_dynamic_layer": head.ops[count - 1].layer if count else None,
                              "agreement": reached("dynamic_head", count)})
            return reached("dynamic_head", count)

        count = _fewest_reaching(try_head, head_limit, target)
        if count is not None:
            found = ("dynamic_head", count)

    candidates = [e for e in quantized if e not in forced]  # what the tail is taken from
    most = len(quantized) - 1 if max_float_ops is None else max_float_ops
    tail_limit = max(0, min(most - len(forced), len(candidates) - 1))

    def tail(count: int) -> list[LayerError]:
        return candidates[len(candidates) - count:] if count else []

    if found is None and float_tail:
        def try_tail(count: int) -> float:
            if ("float_tail", count) not in models:
                content = calibration.quantize([e.tensor for e in forced + tail(count)])
                models["float_tail", count] = (content, agreement(content))
                steps.append({"method": "float_tail", "float_ops": len(forced) + count,
                              "first_float_layer": tail(count)[0].layer if count else None,
                              "agreement": reached("float_tail", count)})
            return reached("float_tail", count)

        count = _fewest_reaching(try_tail, tail_limit, target)
        if count is not None:
            found = ("float_tail", count)
    # Not reachable: the best model seen; on a tie the head (the cheaper ops), then the shorter one.
    method, chosen = found or max(models, key=lambda key: (models[key][1], key[0] == "dynamic_head", -key[1]))
    report = {"target_agreement": target, "search_agreement": reached(method, chosen), "target_met": found is not None,
              "method": method}
    if method == "dynamic_head":
        in_head = {op.index for op in head.ops[:chosen]}
        report.update(quantizer="ai-edge-quantizer", graph_ops=len(head.ops), dynamic_ops=chosen,
                      last_dynamic_layer=head.ops[chosen - 1].layer if chosen else None,
                      dynamic_head=[op.as_dict() for op in head.ops[:chosen]],
                      kept_float=[op.as_dict() for op in named if op.index not in in_head],
                      first_float_layer=None)
        report.update(float_ops=len(report["kept_float"]),
                      quantized_ops=len(head.ops) - chosen - len(report["kept_float"]))
    else:
        kept = sorted(forced + tail(chosen), key=lambda e: e.index)
        report.update(quantizer="tflite-converter", float_ops=len(kept), quantized_ops=len(quantized) - len(kept),
                      first_float_layer=tail(chosen)[0].layer if chosen else None,
                      kept_float=[e.as_dict() for e in kept])
    report["steps"] = steps
    if keep_float is not None:
        report.update(keep_float=keep_float, float_by_setting=len(forced) if method == "float_tail" else len(named))
    if found is None:
        also = f" (besides the {len(forced)} named by keep_float)" if forced else ""
        searched = []
        if head is not None:
            searched.append(f"a dynamic-range head of up to {head_limit} of {len(head.ops)} ops reached agreement "
                            f"{reached('dynamic_head', head_limit):.4f}")
        if float_tail:
            searched.append(f"keeping the last {tail_limit} of {len(candidates)} ops in float{also} reached agreement "
                            f"{reached('float_tail', tail_limit):.4f}")
        report["reason"] = (" and ".join(searched) + f" < target {target}: the loss comes from the int8 ops "
                            "outside them, or the search images are too few to measure the target")
    return models[method, chosen][0], report


def _fewest_reaching(agreement_of: Callable[[int], float], limit: int, target: float) -> int | None:
    """The fewest ops (0, 1, 2, 4, ... up to `limit`, then bisecting) whose model reaches `target`;
    None when not even `limit` does."""
    low, count = -1, 0
    while agreement_of(count) < target:
        low = count
        if count >= limit:
            return None
        count = min(limit, max(1, count * 2))
    high = count
    while high - low > 1:
        middle = (low + high) // 2
        if agreement_of(middle) >= target:
            high = middle
        else:
            low = middle
    return high


def kept_float_summary(report: dict) -> str:
    """What `selective_int8` chose, in words: 'N of M ops kept in float (...)' for a float tail,
    'static int8 with the first N of M ops dynamic-range (...)' for a head ('static int8
    throughout, M ops (...)' for an empty one)."""
    named = (f"{report['float_by_setting']} named by keep_float {report['keep_float']!r}"
             if report.get("float_by_setting") else None)
    if report.get("method") == "dynamic_head":
        where = [f"to {report['last_dynamic_layer']}"] if report["dynamic_ops"] else []
        where += [f"{named} in float"] if named else []
        where.append("ai-edge-quantizer")
        if not report["dynamic_ops"]:
            return f"static int8 throughout, {report['graph_ops']} ops ({'; '.join(where)})"
        return (f"static int8 with the first {report['dynamic_ops']} of {report['graph_ops']} ops dynamic-range "
                f"({'; '.join(where)})")
    where = [named] if named else []
    if report["first_float_layer"]:
        where.append(f"the tail from {report['first_float_layer']} on")
    total = report["float_ops"] + report["quantized_ops"]
    return f"{report['float_ops']} of {total} ops kept in float" + (f" ({'; '.join(where)})" if where else "")


def _matching_ops(ops: Sequence[LayerError], pattern: str) -> list[LayerError]:
    """The ops whose Keras layer name `pattern` matches; a pattern that matches none is an error
    naming the layers there are (a typo would otherwise keep nothing in float, silently)."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"keep_float {pattern!r} is not a regular expression: {err}") from None
    matched = [e for e in ops if compiled.search(e.layer)]
    if not matched:
        layers = list(dict.fromkeys(e.layer for e in ops))
        raise ValueError(f"keep_float {pattern!r} matches none of the {len(ops)} quantized ops' layers "
                         f"({', '.join(layers[:6])}, ... {layers[-1]})")
    if len(matched) == len(ops):
        raise ValueError(f"keep_float {pattern!r} matches every quantized op: nothing would be int8")
    return matched
