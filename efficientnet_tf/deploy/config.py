"""The export settings: what `export_run` writes (the CLI builds its export flags from them)."""

from __future__ import annotations

import dataclasses

from efficientnet_tf.settings import SettingError, check_choices, setting

TFLITE_QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
INTEGER_IO = ("uint8", "int8")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """SavedModel destination, TFLite variants and how they are checked."""

    export_dir: str | None = setting(None, "export: destination (default MODEL_DIR/export); replaced atomically.")
    tflite: tuple[str, ...] = setting(TFLITE_QUANTIZATIONS, "export: TFLite formats to write; empty (on the "
                                      "command line: none) for the SavedModel only.", choices=TFLITE_QUANTIZATIONS)
    check_images: int = setting(2000, "export: eval images on which each TFLite model is compared with the float "
                                "model (0: the whole eval split).")
    int8_io: str = setting("uint8", "export: input/output type of the full-integer TFLite model.", choices=INTEGER_IO)
    calibration_dataset: str | None = setting(
        None, "export: dataset whose images calibrate int8/int16x8 and check each TFLite model's agreement "
        "(default: the run's own; any dataset of similar images works where that one is not available).")

    def __post_init__(self):
        object.__setattr__(self, "tflite", tuple(self.tflite))  # a list is welcome; stored as a tuple

    def validate(self) -> None:
        check_choices(self)
        if self.check_images < 0:
            raise SettingError("check_images", f"check_images must be >= 0 (0: the whole eval split), "
                               f"got {self.check_images}")
