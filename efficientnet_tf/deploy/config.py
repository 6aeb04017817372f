"""The export settings: what `export_run` writes (the CLI builds its export flags from them)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from efficientnet_tf.settings import SettingError, check_choices, setting

TFLITE_QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "int16x8")  # one converter run each
# int8_selective: int8 with a dynamic-range head or a float tail (searched for; deploy/int8_search.py).
TFLITE_FORMATS = TFLITE_QUANTIZATIONS + ("int8_selective",)
SELECTIVE_SEARCHES = ("dynamic_head", "float_tail")
INTEGER_IO = ("uint8", "int8")
ONNX_OPSET = 18


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """SavedModel destination, TFLite variants and how they are checked."""

    export_dir: str | None = setting(None, "export: destination (default MODEL_DIR/export): a new or empty directory, "
                                      "or an earlier export of this run (files it does not rewrite are kept).")
    tflite: tuple[str, ...] = setting(TFLITE_QUANTIZATIONS, "export: TFLite formats to write; empty (on the "
                                      "command line: none) for the SavedModel only. int8_selective (not in the "
                                      "default: it searches) is int8 with the start of the network in "
                                      "dynamic-range int8 or its end in float.",
                                      choices=TFLITE_FORMATS)
    check_images: int = setting(2000, "export: images on which each exported model is compared with the float "
                                "model: the eval split first, then training images (0: every image, for "
                                "datasets that fit in memory).")
    int8_io: str = setting("uint8", "export: input/output type of the full-integer TFLite model.", choices=INTEGER_IO)
    int8_target_agreement: float = setting(
        0.995, "export: int8_selective adds ops to its dynamic-range head or float tail until its agreement "
        "with the float model (top-1; for an embedding run, the share of images that keep their nearest "
        "neighbour), on training images (not the eval split), reaches this share; in (0, 1].")
    int8_keep_float: str | None = setting(
        None, "export: a regular expression of Keras layer names (e.g. '^(rescaling|normalization|stem_)') whose "
        "ops int8_selective keeps in float whatever its search finds; the search adds a head or tail only if "
        "they do not reach the target.")
    int8_selective_search: tuple[str, ...] = setting(
        SELECTIVE_SEARCHES, "export: what int8_selective searches until one reaches the target, head first: "
        "dynamic_head (ai-edge-quantizer's static int8 with the first ops in dynamic-range int8: int8 weights, "
        "float activations; needs the tflite extra) and float_tail (the converter's int8 with the last ops in "
        "float). For an accelerator without dynamic-range kernels, float_tail alone.", choices=SELECTIVE_SEARCHES)
    onnx: bool = setting(False, "export: also write model.onnx (float32, needs the onnx extra) and check it with "
                         "onnxruntime.")
    calibration_dataset: str | None = setting(
        None, "export: dataset whose images calibrate int8/int16x8 and check each TFLite model's agreement "
        "(default: the run's own; any dataset of similar images works where that one is not available).")

    def __post_init__(self):
        object.__setattr__(self, "tflite", tuple(self.tflite))  # a list is welcome; stored as a tuple

    def validate(self) -> None:
        check_choices(self)
        if self.check_images < 0:
            raise SettingError("check_images", f"check_images must be >= 0 (0: every image), got {self.check_images}")
        if not 0 < self.int8_target_agreement <= 1:
            raise SettingError("int8_target_agreement", "int8_target_agreement is a share of images, in (0, 1]; "
                               f"got {self.int8_target_agreement}")
        if not self.int8_selective_search:
            raise SettingError("int8_selective_search", "int8_selective_search names no search; choose from "
                               f"{', '.join(SELECTIVE_SEARCHES)}")
        if "int8_selective" in self.tflite and "float_tail" not in self.int8_selective_search:
            require_edge_quantizer()
        if self.int8_keep_float is not None:
            if "int8_selective" not in self.tflite:
                raise SettingError("int8_keep_float", "int8_keep_float names the layers int8_selective keeps in float, "
                                   "and the TFLite formats do not include int8_selective")
            try:
                re.compile(self.int8_keep_float)
            except re.error as err:
                raise SettingError("int8_keep_float", f"int8_keep_float {self.int8_keep_float!r} is not a regular "
                                   f"expression: {err}") from None
        if self.onnx:
            require_onnx()


def require_onnx() -> None:
    """A clear line, not an ImportError deep inside the export, when the onnx extra is missing."""
    import importlib.util

    missing = [name for name in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise SettingError("onnx", f"ONNX export needs {', '.join(missing)}: pip install tf2onnx onnx onnxruntime "
                           "(in a checkout: pip install -e '.[onnx]')")


EDGE_QUANTIZER_INSTALL = "pip install ai-edge-quantizer (in a checkout: pip install -e '.[tflite]')"


def require_edge_quantizer() -> None:
    """A clear line when int8_selective's head search is the only one asked for and cannot run."""
    import importlib.util

    if importlib.util.find_spec("ai_edge_quantizer") is None:
        raise SettingError("int8_selective_search", "int8_selective_search=dynamic_head needs ai-edge-quantizer: "
                           f"{EDGE_QUANTIZER_INSTALL}, or search float_tail")


def keep_float_layers(pattern: str, layer_names: Sequence[str]) -> list[str]:
    """The layers of a model that `int8_keep_float` names, checked before any conversion: a pattern
    that matches none of them (a typo would keep nothing in float) names the layer groups there are;
    one that matches all of them would leave nothing int8."""
    compiled = re.compile(pattern)
    matched = [name for name in layer_names if compiled.search(name)]
    if not matched:
        groups = dict.fromkeys(name.split("_")[0] + ("_*" if "_" in name else "") for name in layer_names)
        raise SettingError("int8_keep_float", f"int8_keep_float {pattern!r} matches none of the model's "
                           f"{len(layer_names)} layers: {', '.join(groups)}")
    if len(matched) == len(layer_names):
        raise SettingError("int8_keep_float", f"int8_keep_float {pattern!r} matches every layer of the model: "
                           "nothing would be int8")
    return matched
