"""Export a trained run: SavedModel with serving signatures, TFLite (float and quantized), and
the agreement of each quantized model with the float one.

The SavedModel takes float images 0..255 at the model's size (`serving_default`) or encoded
JPEG/PNG bytes (`serving_bytes`, decoded, cropped and resized in the graph exactly as the eval
pipeline does), and returns probabilities plus the top-k class ids and names. Directories are
written next to their destination and swapped in at the end, so a failed export never leaves a
half-written directory where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.data.pipeline import PipelineConfig, make_dataset
from efficientnet_tf.deploy.config import INTEGER_IO, TFLITE_QUANTIZATIONS, ExportConfig
from efficientnet_tf.deploy.serving import SIGNATURE_BYTES, SIGNATURE_IMAGES, ServingModule
from efficientnet_tf.files import atomic_write, replace_directory
from efficientnet_tf.models.builder import build_model, functional_model
from efficientnet_tf.models.official import resolve_weights
from efficientnet_tf.models.scopes import dtype_policy
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training.checkpoints import restore_newest_readable
from efficientnet_tf.training.ema import WeightAverage
from efficientnet_tf.training.rundir import RunDir, load_run

NEEDS_REPRESENTATIVE_DATA = ("int8", "int16x8")


def load_trained_model(model_dir: str, use_ema: bool = True) -> tuple[keras.Model, dict]:
    """The newest checkpoint of a run as a float32 Keras model that outputs logits, with the
    EMA weights when the run kept them (what the papers evaluate), and the run info."""
    config, info = load_run(model_dir)
    checkpoint_dir = RunDir(model_dir).checkpoints
    size = int(info["image_size"])
    with dtype_policy("float32"):
        # The run's dropout and drop-connect rates: at 0 the model has no such layers, and the
        # checkpoint's layer numbering follows the layers that exist.
        # A run started from an official family keeps that family's input normalization.
        network, _ = resolve_weights(config.model.name, config.model.weights)
        model = build_model(network, num_classes=int(info["num_classes"]), input_shape=(size, size, 3),
                            weights=None, classifier_activation=None, dropout_rate=config.model.dropout_rate,
                            drop_connect_rate=config.model.drop_connect_rate)
    decay = config.optimizer.ema_decay
    ema = WeightAverage(model.variables, decay) if decay > 0 else None
    checkpoint = tf.train.Checkpoint(model=model, **({"ema": ema} if ema is not None else {}))
    latest, _ = restore_newest_readable(checkpoint, checkpoint_dir, partial=True)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}: train this run first")
    if ema is not None and use_ema:
        ema.swap()
    info = dict(info, checkpoint=latest, ema=bool(ema is not None and use_ema))
    return model, info


def export_saved_model(model: keras.Model, export_dir: str, class_names: Sequence[str], image_size: int,
                       top_k: int = 5, crop_padding: int = 32, metadata: dict | None = None,
                       logits: bool = True) -> str:
    """Write the SavedModel (+ `labels.txt`, `export.json`) atomically to export_dir."""
    module = ServingModule(model, class_names, image_size, top_k, crop_padding, logits=logits)

    def build(path):
        tf.saved_model.save(module, path, signatures={SIGNATURE_IMAGES: module.serve_images,
                                                      SIGNATURE_BYTES: module.serve_bytes})
        with open(os.path.join(path, "labels.txt"), "w") as f:
            f.write("\n".join(str(n) for n in class_names) + "\n")
        with open(os.path.join(path, "export.json"), "w") as f:
            json.dump(dict(metadata or {}, image_size=image_size, top_k=module.top_k,
                           signatures=[SIGNATURE_IMAGES, SIGNATURE_BYTES]), f, indent=2)

    return replace_directory(build, export_dir)


def probability_model(model: keras.Model) -> keras.Model:
    """Logits model -> probabilities (float32): the graph TFLite converts."""
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(model.output)
    return functional_model(model.input, outputs, f"{model.name}_probabilities", max_layers=len(model.layers) + 1)


def convert_tflite(model: keras.Model, quantization: str, representative_images: Iterable | None = None,
                   integer_io: str = "uint8") -> bytes:
    """One TFLite flatbuffer: via `model.export()` and `TFLiteConverter.from_saved_model`.

    int8: full-integer ops with `integer_io` (uint8|int8) input and output; int16x8: 16-bit
    activations, 8-bit weights, float I/O. Both calibrate on `representative_images`
    (float 0..255, one image or a batch per item).
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise SettingError("tflite", f"unknown TFLite quantization {quantization!r}; choose from "
                           f"{', '.join(TFLITE_QUANTIZATIONS)}")
    if integer_io not in INTEGER_IO:
        raise SettingError("int8_io", f"integer_io must be one of {', '.join(INTEGER_IO)}, got {integer_io!r}")
    if quantization in NEEDS_REPRESENTATIVE_DATA and representative_images is None:
        raise ValueError(f"{quantization} quantization needs representative images (from the training pipeline)")
    with tempfile.TemporaryDirectory() as tmp:
        probability_model(model).export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantization != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization in NEEDS_REPRESENTATIVE_DATA:
            images = list(representative_images)

            def representative():
                for image in images:
                    image = np.asarray(image, np.float32)
                    yield [image if image.ndim == 4 else image[None]]

            converter.representative_dataset = representative
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8 if integer_io == "uint8" else tf.int8
            converter.inference_output_type = converter.inference_input_type
        if quantization == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return converter.convert()


class TFLiteRunner:
    """Runs a .tflite file with the LiteRT interpreter, quantizing inputs and dequantizing
    outputs as the model's I/O types require; images are float 0..255."""

    def __init__(self, model_path_or_content, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model_path_or_content, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(model_path_or_content), num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=os.fspath(model_path_or_content), num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = images.shape[0]
        dtype = self.input["dtype"]
        if dtype in (np.uint8, np.int8, np.int16):
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            images = np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if out.dtype in (np.uint8, np.int8, np.int16):
            scale, zero_point = self.output["quantization"]
            out = (out.astype(np.float32) - zero_point) * scale
        return out

    @property
    def io_types(self) -> str:
        return f"{np.dtype(self.input['dtype']).name} in / {np.dtype(self.output['dtype']).name} out"


def export_tflite(model: keras.Model, export_dir: str, quantizations: Sequence[str] = TFLITE_QUANTIZATIONS,
                  representative_images: Iterable | None = None, integer_io: str = "uint8") -> dict[str, str]:
    """Write `model_<quantization>.tflite` files into export_dir (each written to a temporary
    file, then renamed); returns {quantization: path}."""
    os.makedirs(export_dir, exist_ok=True)
    images = list(representative_images) if representative_images is not None else None
    paths = {}
    for quantization in quantizations:
        content = convert_tflite(model, quantization, images, integer_io)
        path = os.path.join(export_dir, f"model_{quantization}.tflite")
        atomic_write(path, content)
        paths[quantization] = path
    return paths


def agreement_report(model: keras.Model, tflite_paths: dict[str, str], images: np.ndarray, labels=None,
                     batch_size: int = 32) -> dict[str, dict]:
    """For each TFLite file: size, I/O types, top-1 agreement with the float Keras model on
    `images` (and top-1 accuracy when labels are given), batch-1 latency."""
    images = np.asarray(images, np.float32)
    reference = np.concatenate([np.argmax(model.predict_on_batch(images[i:i + batch_size]), -1)
                                for i in range(0, len(images), batch_size)])
    report = {}
    for name, path in tflite_paths.items():
        runner = TFLiteRunner(path)
        predicted = np.concatenate([np.argmax(runner(images[i:i + batch_size]), -1)
                                    for i in range(0, len(images), batch_size)])
        single = TFLiteRunner(path)
        single(images[:1])  # warm-up
        start = time.perf_counter()
        repeats = min(len(images), 20)
        for i in range(repeats):
            single(images[i:i + 1])
        latency_ms = (time.perf_counter() - start) / repeats * 1e3
        entry = {"size_bytes": os.path.getsize(path), "io": runner.io_types,
                 "agreement": float(np.mean(predicted == reference)), "images": int(len(images)),
                 "latency_ms_batch1": latency_ms}
        if labels is not None:
            entry["top1"] = float(np.mean(predicted == np.asarray(labels)))
        report[name] = entry
    if labels is not None:
        report["keras_float32"] = {"top1": float(np.mean(reference == np.asarray(labels))), "images": int(len(images))}
    return report


def format_report(report: dict[str, dict]) -> str:
    lines = [f"{'model':<16} {'size':>10} {'I/O':<22} {'agree':>7} {'top-1':>7} {'ms/img':>8}"]
    for name, entry in report.items():
        size = f"{entry['size_bytes'] / 1e6:.2f} MB" if "size_bytes" in entry else "-"
        agree = f"{entry['agreement']:.4f}" if "agreement" in entry else "-"
        top1 = f"{entry['top1']:.4f}" if "top1" in entry else "-"
        latency = f"{entry['latency_ms_batch1']:.2f}" if "latency_ms_batch1" in entry else "-"
        lines.append(f"{name:<16} {size:>10} {entry.get('io', 'float32'):<22} {agree:>7} {top1:>7} {latency:>8}")
    return "\n".join(lines)


def pipeline_images(model_dir: str, count: int, training: bool):
    """Images (float 0..255) and labels from a run's own data pipeline: the training pipeline
    (random crops, no RandAugment/mixup) for calibration, the eval pipeline for agreement."""
    config, info = load_run(model_dir)
    return _take_images(config.load_source("skip"), int(info["image_size"]), config.run.seed, count, training)


def _take_images(source, image_size: int, seed: int | None, count: int, training: bool):
    pipeline = PipelineConfig(image_size=image_size, global_batch_size=min(count, 64), seed=seed, drop_remainder=False)
    images, labels = [], []
    for batch_images, batch_labels in make_dataset(source, pipeline, training=training, repeat=training):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
        if sum(len(b) for b in images) >= count:
            break
    images, labels = np.concatenate(images)[:count], np.concatenate(labels)[:count]
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    return images, labels


def export_run(model_dir: str, *, config: ExportConfig | None = None, top_k: int = 5, use_ema: bool = True,
               calibration_images: int = 200, **settings) -> dict:
    """Export a run: `<export_dir>/saved_model/`, `<export_dir>/model_<q>.tflite` and
    `<export_dir>/export_report.json`. The whole directory is built aside and swapped in at the end.

    Args:
        model_dir: a training run's directory.
        config: what to write (`ExportConfig`: export_dir, tflite formats, check_images,
            int8_io); or give those as keyword `settings`, e.g. `export_run(run, tflite=["int8"])`.
        top_k: classes each serving signature returns.
        use_ema: export the EMA weights when the run kept them.
        calibration_images: training-pipeline images the int8/int16x8 converters calibrate on.

    Returns:
        The report (also in export_report.json): sizes, and per TFLite file its agreement with
        the float model on the first `check_images` eval images (0: the whole eval split).
    """
    if config is None:
        config = ExportConfig(**settings)
    elif settings:
        raise TypeError("pass either an ExportConfig or keyword settings, not both")
    config.validate()
    tflite, check_images = config.tflite, config.check_images or None
    model, info = load_trained_model(model_dir, use_ema=use_ema)
    export_dir = config.export_dir or RunDir(model_dir).export
    size = int(info["image_size"])
    report = {"model": info["model"], "dataset": info["dataset"], "checkpoint": info["checkpoint"], "ema": info["ema"],
              "image_size": size}
    representative = eval_images = eval_labels = None
    if tflite:
        run_config, _ = load_run(model_dir)
        seed = run_config.run.seed
        source = _calibration_source(run_config, config.calibration_dataset)  # once: calibration and agreement
        if any(q in NEEDS_REPRESENTATIVE_DATA for q in tflite):
            representative, _ = _take_images(source, size, seed, calibration_images, training=True)
        eval_images, eval_labels = _take_images(source, size, seed, check_images or 10**9, training=False)
        if config.calibration_dataset:
            eval_labels = None  # another dataset's labels are not this model's classes: agreement only

    def build(path):
        saved_model = os.path.join(path, "saved_model")
        export_saved_model(model, saved_model, info["class_names"], size, top_k, metadata=report)
        report["saved_model_bytes"] = _directory_size(saved_model)
        if tflite:
            paths = export_tflite(model, path, tflite, representative, config.int8_io)
            report["tflite"] = agreement_report(model, paths, eval_images, eval_labels)
        with open(os.path.join(path, "export_report.json"), "w") as f:
            json.dump(report, f, indent=2)

    # The SavedModel is itself written with replace_directory inside the staging dir: harmless.
    replace_directory(build, export_dir)
    report["export_dir"] = os.path.abspath(export_dir)
    return report


def _calibration_source(run_config, calibration_dataset: str | None):
    """The dataset TFLite export calibrates on: the run's own, or `calibration_dataset`."""
    dataset = calibration_dataset or run_config.data.dataset
    try:
        if calibration_dataset:
            return run_config.replace(dataset=calibration_dataset, label_key="label").load_source("skip")
        return run_config.load_source("skip")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"TFLite export calibrates on and checks against images of the run's dataset, but {dataset!r} cannot "
            f"be loaded here ({err}). Export the SavedModel only (no TFLite formats), or name another dataset of "
            "similar images as calibration_dataset") from None


def _directory_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
