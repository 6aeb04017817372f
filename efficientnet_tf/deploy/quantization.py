"""Where full-integer int8 loses accuracy, and an int8 model that keeps it.

Swish and squeeze-excite models lose accuracy under full-integer int8 while int16 activations
keep it but run slowly. `layer_errors` shows where the loss comes from: TFLite's quantization
debugger runs each quantized op on the float model's own inputs and compares its output with
the float op's, so every op's error is its own, not an accumulation of the ops before it.
The figure used is RMSE divided by the output's quantization step (`rmse_over_scale`): rounding
alone gives 1/sqrt(12) ~ 0.29; ops far above that are broken by their quantization.

`selective_int8` keeps the end of the network in float: the last op, the last 2, 4, ... then
bisecting, until the model agrees with the float model on a target share of search images, and
reports every step. Why the end and not the ops with the largest own error: an op kept in float
among int8 ops hands its output to an int8 op, which quantizes it again, so the error it avoided
comes straight back; only a connected float region keeps its tensors in float, and the region
that ends at the output keeps every error it avoids out of the logits. (On EfficientNet-B0 and
V2-B0, whose ops all sit near the rounding level, keeping the worst ops in float moved agreement
only once most of the network was float: docs/deployment.md.) `keep_float` names layers to keep in
float besides the tail: a region at the input, where the int8 loss of an ArcFace glyph embedding
sat (docs/deployment.md).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

# Ops that move values between int8 and float: their "error" is the conversion, not an op to keep.
_NOT_CANDIDATES = ("QUANTIZE", "DEQUANTIZE")


@dataclasses.dataclass(frozen=True)
class LayerError:
    """One quantized op's own error, in network order (`index`)."""

    index: int
    op: str  # TFLite op type: CONV_2D, LOGISTIC, MUL, ...
    tensor: str  # the op's output tensor: what `selective_int8` keeps in float
    layer: str  # the Keras layer the op came from (block2a_se_excite, top_conv, ...)
    rmse: float
    scale: float

    @property
    def rmse_over_scale(self) -> float:
        return self.rmse / self.scale if self.scale > 0 else 0.0

    def as_dict(self) -> dict:
        return {"index": self.index, "op": self.op, "layer": self.layer, "tensor": self.tensor,
                "rmse": self.rmse, "scale": self.scale, "rmse_over_scale": self.rmse_over_scale}


def keras_layer_name(tensor_name: str, output_layer: str = "probabilities") -> str:
    """'model_probabilities_1/block2a_se_excite_1/mul;...' -> 'block2a_se_excite'; the
    signature's output tensor -> `output_layer`, the layer that computes it."""
    if tensor_name.startswith("StatefulPartitionedCall"):
        return output_layer
    parts = tensor_name.split(";")[0].split("/")
    name = parts[1] if len(parts) > 1 else parts[0]
    return re.sub(r"_\d+$", "", name)


@contextlib.contextmanager
def _debugger_interpreters():
    """The debugger runs models with tf.lite.Interpreter, which warns that it is deprecated: the
    user did not choose it, and cannot act on that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        yield


def _images_dataset(images: np.ndarray) -> Callable:
    def generate():
        for image in np.asarray(images, np.float32):
            yield [image[None]]

    return generate


class Int8Calibration:
    """A float SavedModel calibrated once for int8; quantized with any set of ops kept in float.

    Args:
        saved_model_dir: the float model (images 0..255 in, probabilities or an embedding out).
        representative_images: images that set the activation ranges (float 0..255).
        debug_images: images the per-op errors are measured on (default: the representative ones).
        output_layer: the Keras layer whose output is the model's output (its ops' errors are
            reported under that name).
    """

    def __init__(self, saved_model_dir: str, representative_images: np.ndarray, debug_images: np.ndarray | None = None,
                 output_layer: str = "probabilities"):
        self.output_layer = output_layer
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _images_dataset(representative_images)
        with _debugger_interpreters():
            self._debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=_images_dataset(representative_images if debug_images is None else debug_images))
        self._errors = None

    def layer_errors(self) -> list[LayerError]:
        """Every quantized op's own error on the debug images, in network order."""
        if self._errors is None:
            with _debugger_interpreters():
                self._debugger.options = tf.lite.experimental.QuantizationDebugOptions()
                self._debugger.run()
            table = io.StringIO()
            self._debugger.layer_statistics_dump(table)
            table.seek(0)
            self._errors = [
                LayerError(index=i, op=row["op_name"], tensor=row["tensor_name"],
                           layer=keras_layer_name(row["tensor_name"], self.output_layer),
                           rmse=float(np.sqrt(max(float(row["mean_squared_error"]), 0.0))), scale=float(row["scale"]))
                for i, row in enumerate(csv.DictReader(table))]
        return self._errors

    def quantize(self, keep_float: Sequence[str] = ()) -> bytes:
        """The int8 model (float input and output) with the ops producing `keep_float` in float."""
        with _debugger_interpreters():
            self._debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=list(keep_float) or None)
            return self._debugger.get_nondebug_quantized_model()


def selective_int8(calibration: Int8Calibration, agreement: Callable[[bytes], float], target: float = 0.995,
                   max_float_ops: int | None = None, keep_float: str | None = None) -> tuple[bytes, dict]:
    """Keep the last ops of the network in float until `agreement(model) >= target`.

    Args:
        calibration: the calibrated model.
        agreement: top-1 agreement of a TFLite model (bytes) with the float model, measured on
            images that are not the evaluation images.
        target: the agreement to reach, in (0, 1].
        max_float_ops: the most ops kept in float (default: all but one; with every op in float
            it is no longer an int8 model).
        keep_float: a regular expression; the ops of every Keras layer whose name it matches
            (`re.search`, e.g. "^(rescaling|normalization|stem_)" for the input's scaling and the
            stem) stay in float whatever the search finds, and the search adds a float tail only
            if they do not already reach the target. It must match at least one op. Its ops count
            towards `max_float_ops`, which then bounds the tail only (never drops a named op).

    Returns:
        The chosen model and its report: target, whether it was met (and if not, why), the ops
        kept in float (in network order) with their own errors (`float_by_setting`: how many of
        them `keep_float` chose), and every step of the search.
        The bisection assumes that a longer float tail agrees at least as well; where the
        measured agreement is not monotonic the result is a tail that meets the target, not
        necessarily the shortest one.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target agreement must be in (0, 1], got {target}")
    if max_float_ops is not None and max_float_ops < 0:
        raise ValueError(f"max_float_ops must be >= 0, got {max_float_ops}")
    quantized = sorted((e for e in calibration.layer_errors() if e.op not in _NOT_CANDIDATES), key=lambda e: e.index)
    forced = _matching_ops(quantized, keep_float) if keep_float is not None else []
    candidates = [e for e in quantized if e not in forced]  # what the tail is taken from
    most = len(quantized) - 1 if max_float_ops is None else max_float_ops
    limit = max(0, min(most - len(forced), len(candidates) - 1))
    steps, models = [], {}

    def tail(count: int) -> list[LayerError]:
        return candidates[len(candidates) - count:] if count else []

    def try_keeping(count: int) -> float:
        if count not in models:
            content = calibration.quantize([e.tensor for e in forced + tail(count)])
            models[count] = (content, agreement(content))
            steps.append({"float_ops": len(forced) + count, "first_float_layer": tail(count)[0].layer if count else None,
                          "agreement": models[count][1]})
        return models[count][1]

    # Grow the float tail geometrically until the target is met, then bisect for the shortest.
    low, high, count = -1, None, 0
    while True:
        if try_keeping(count) >= target:
            high = count
            break
        low = count
        if count >= limit:
            break
        count = min(limit, max(1, count * 2))
    if high is not None:
        while high - low > 1:
            middle = (low + high) // 2
            if try_keeping(middle) >= target:
                high = middle
            else:
                low = middle
        chosen = high
    else:  # not reachable: the best seen, the shorter tail on a tie
        chosen = max(models, key=lambda c: (models[c][1], -c))
    kept = sorted(forced + tail(chosen), key=lambda e: e.index)
    report = {"target_agreement": target, "search_agreement": models[chosen][1], "target_met": high is not None,
              "float_ops": len(kept), "quantized_ops": len(quantized) - len(kept),
              "first_float_layer": tail(chosen)[0].layer if chosen else None,
              "kept_float": [e.as_dict() for e in kept], "steps": steps}
    if keep_float is not None:
        report.update(keep_float=keep_float, float_by_setting=len(forced))
    if high is None:
        also = f" (besides the {len(forced)} named by keep_float)" if forced else ""
        report["reason"] = (f"keeping the last {limit} of {len(candidates)} ops in float{also} reached agreement "
                            f"{models[limit][1]:.4f} < target {target}: the loss comes from the int8 ops before "
                            "them, or the search images are too few to measure the target")
    return models[chosen][0], report


def kept_float_summary(report: dict) -> str:
    """'N of M ops kept in float (...)': which ones, from `selective_int8`'s report."""
    where = []
    if report.get("float_by_setting"):
        where.append(f"{report['float_by_setting']} named by keep_float {report['keep_float']!r}")
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
