"""Where full-integer int8 loses accuracy, and the two int8 quantizers that `deploy.int8_search`
chooses between.

Swish and squeeze-excite models lose accuracy under full-integer int8 while int16 activations
keep it but run slowly. `layer_errors` shows where the loss comes from: TFLite's quantization
debugger runs each quantized op on the float model's own inputs and compares its output with
the float op's, so every op's error is its own, not an accumulation of the ops before it.
The figure used is RMSE divided by the output's quantization step (`rmse_over_scale`): rounding
alone gives 1/sqrt(12) ~ 0.29; ops far above that are broken by their quantization.

`Int8Calibration` is the converter's int8 with any ops kept in float; `DynamicHeadInt8` is
ai-edge-quantizer's static int8 with the first ops in dynamic-range int8. `selective_int8`
(`deploy.int8_search`) searches both for the cheapest model that keeps the float model's accuracy.
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

from efficientnet_tf._lazy import moved_names
from efficientnet_tf.deploy.config import EDGE_QUANTIZER_INSTALL


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


@dataclasses.dataclass(frozen=True)
class GraphOp:
    """One op of the float TFLite graph, in execution order."""

    index: int
    op: str  # CONV_2D, LOGISTIC, MUL, ...
    scope: str  # ai-edge-quantizer's key for the op: its output tensors' names, each followed by ';'
    layer: str  # the Keras layer the op came from

    def as_dict(self) -> dict:
        return {"index": self.index, "op": self.op, "layer": self.layer, "tensor": self.scope}


def edge_quantizer_missing() -> str | None:
    """Why ai-edge-quantizer cannot be used here (one line), or None when it can."""
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError as err:
        return f"ai-edge-quantizer is not installed ({err}): {EDGE_QUANTIZER_INSTALL}"
    return None


class DynamicHeadInt8:
    """Static int8 from ai-edge-quantizer, with the first ops of the network in dynamic-range int8.

    On EfficientNet-B0 and V2-B0 the static int8 of ai-edge-quantizer agrees with the float model
    more often than the TFLite converter's (its calibration keeps a moving average of each image's
    activation range, which clips the rare outliers of augmented crops, where the converter keeps
    the widest range seen), and on V2-B0 what it still loses sits at the start of the network,
    whose errors every later op inherits. A head of dynamic-range ops (int8 weights, float
    activations; ops without such a kernel, e.g. the squeeze-excite sigmoid and multiply, stay
    float) keeps that error out at little cost: V2-B0's first 32 ops run within a few percent of
    full int8 (docs/deployment.md has the figures).

    Args:
        float_tflite: the float32 TFLite model (bytes).
        representative_images: images that set the activation ranges (float 0..255).
        output_layer: the Keras layer whose output is the model's output.
    """

    def __init__(self, float_tflite: bytes, representative_images: np.ndarray, output_layer: str = "probabilities"):
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils
        from tensorflow.lite.python import schema_py_generated as schema

        self._float = bytes(float_tflite)
        graph = tfl_flatbuffer_utils.read_model(self._float)
        subgraph = graph.subgraphs[0]
        names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        self.ops = []
        for index, op in enumerate(subgraph.operators):
            code = graph.operatorCodes[op.opcodeIndex]
            scope = tfl_flatbuffer_utils.get_op_scope(op, subgraph.tensors)
            self.ops.append(GraphOp(index, names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"),
                                    scope, keras_layer_name(scope.split(";")[0], output_layer)))
        signatures = Interpreter(model_content=self._float).get_signature_list()
        signature = next(iter(signatures))
        image_input = signatures[signature]["inputs"][0]
        self._calibration_data = {signature: [{image_input: image[None]}
                                              for image in np.asarray(representative_images, np.float32)]}
        self._ranges = None

    def _quantizer(self):
        from ai_edge_quantizer import quantizer, recipe

        edge = quantizer.Quantizer(self._float)
        edge.load_quantization_recipe(recipe.static_wi8_ai8())
        return edge

    def quantize(self, head: int, keep_float: Sequence[GraphOp] = ()) -> bytes:
        """Static int8 with the first `head` ops dynamic-range and the ops of `keep_float` float.
        Input and output are int8, their scale and zero point in the file (pixels 0..255 in steps
        of about 1; `TFLiteRunner` quantizes with them)."""
        from ai_edge_quantizer import algorithm_manager, qtyping

        every_op = qtyping.TFLOperationName.ALL_SUPPORTED
        if self._ranges is None:  # one calibration serves every head: it records every tensor's range
            edge = self._quantizer()
            with _quiet_edge_quantizer():
                self._ranges = edge.calibrate(self._calibration_data)
        edge = self._quantizer()

        def exactly(ops: Sequence[GraphOp]) -> str:
            return "^(?:" + "|".join(re.escape(op.scope) for op in ops) + ")$"

        # The quantizer applies the last config whose regex matches an op's scope; a config for every
        # op type replaces the earlier ones under the same regex string, hence the three spellings.
        if head:
            edge.update_quantization_recipe(regex=exactly(self.ops[:head]), operation_name=every_op,
                                            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
            edge.add_dynamic_config(regex="(?:" + exactly(self.ops[:head]) + ")", operation_name=every_op, num_bits=8)
        if keep_float:
            edge.update_quantization_recipe(regex="(?:(?:" + exactly(keep_float) + "))", operation_name=every_op,
                                            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        with _quiet_edge_quantizer():
            return bytes(edge.quantize(self._ranges, enable_progress_report=False).quantized_model)


@contextlib.contextmanager
def _quiet_edge_quantizer():
    """ai-edge-quantizer prints progress bars and absl INFO lines per call: a search makes dozens."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# The search, here before 0.2: importable from this module for one release, with a FutureWarning.
_MOVED = dict.fromkeys(("selective_int8", "kept_float_summary", "_fewest_reaching", "_matching_ops", "_NOT_CANDIDATES"),
                       "efficientnet_tf.deploy.int8_search")
__getattr__, __dir__ = moved_names(__name__, _MOVED, globals())
