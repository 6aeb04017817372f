"""Deployment: a trained run -> SavedModel (pixels or image bytes in), TFLite (selective int8
included) and ONNX; predictions."""

from efficientnet_tf._lazy import lazy_exports

_EXPORTS = {
    "ExportConfig": "config", "TFLITE_QUANTIZATIONS": "config", "TFLITE_FORMATS": "config",
    "ServingModule": "serving",
    "export_run": "export", "load_trained_model": "export", "export_saved_model": "saved_model",
    "export_tflite": "tflite", "convert_tflite": "tflite", "TFLiteRunner": "tflite",
    "OnnxRunner": "onnx", "convert_onnx": "onnx", "agreement_report": "reports",
    "Int8Calibration": "quantization", "DynamicHeadInt8": "quantization", "selective_int8": "int8_search",
    "Predictor": "predict", "format_predictions": "predict", "imagenet_class_names": "predict",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
