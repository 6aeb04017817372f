"""Export a trained run: SavedModel with serving signatures, TFLite (float and quantized), ONNX,
and the agreement of each with the float model.

The SavedModel takes float images 0..255 at the model's size (`serving_default`) or encoded
JPEG/PNG bytes (`serving_bytes`, decoded, cropped and resized in the graph exactly as the eval
pipeline does), and returns probabilities plus the top-k class ids and names. An export is built
next to its destination and moved in at the end (`deploy.destination`: what may be written where,
and how a re-export keeps the files it does not rewrite).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.data.pipeline import CALIBRATION_IMAGES, PipelineConfig, make_dataset
from efficientnet_tf.data.sources import EMBEDDING_ONLY_SOURCES
from efficientnet_tf.deploy.destination import ExportDestination
from efficientnet_tf.deploy.config import (INTEGER_IO, ONNX_OPSET, TFLITE_QUANTIZATIONS, ExportConfig, keep_float_layers,
                                          require_onnx)
from efficientnet_tf.deploy.serving import SIGNATURE_BYTES, SIGNATURE_IMAGES, ServingModule
from efficientnet_tf.files import atomic_write, move_aside, replace_directory
from efficientnet_tf.models.builder import build_model, functional_model
from efficientnet_tf.models.official import resolve_weights
from efficientnet_tf.models.scopes import dtype_policy
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training.checkpoints import restore_newest_readable
from efficientnet_tf.training.ema import WeightAverage
from efficientnet_tf.training.rundir import RunDir, load_run

log = logging.getLogger(__name__)

NEEDS_REPRESENTATIVE_DATA = ("int8", "int16x8", "int8_selective")
SEARCH_IMAGES = 2000  # training images int8_selective's search measures agreement on
MAX_CHECK_BYTES = 4 << 30  # check_images=0 holds every image in memory: fine for digits, not for ImageNet
LAYER_ERRORS_PNG = "int8_layer_errors.png"


def load_trained_model(model_dir: str, use_ema: bool = True) -> tuple[keras.Model, dict]:
    """The newest checkpoint of a run as a float32 Keras model that outputs logits (an embedding
    run: the L2-normalised embedding, without the loss's class centres), with the EMA weights
    when the run kept them (what the papers evaluate), and the run info."""
    config, info = load_run(model_dir)
    checkpoint_dir = RunDir(model_dir).checkpoints
    size = int(info["image_size"])
    recognition = config.recognition
    head = (dict(include_top=False, embedding_dim=recognition.embedding_dim, embedding_head=recognition.embedding_head)
            if recognition.embedding else {})
    with dtype_policy("float32"):
        # The run's dropout and drop-connect rates: at 0 the model has no such layers, and the
        # checkpoint's layer numbering follows the layers that exist.
        # A run started from an official family keeps that family's input normalization.
        network, _ = resolve_weights(config.model.name, config.model.weights)
        model = build_model(network, num_classes=int(info["num_classes"]), input_shape=(size, size, 3),
                            weights=None, classifier_activation=None, dropout_rate=config.model.dropout_rate,
                            drop_connect_rate=config.model.drop_connect_rate, **head)
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
    """Write the SavedModel (+ `labels.txt`, `export.json`) to export_dir, built aside and moved
    in whole; anything already at export_dir is renamed `<export_dir>.replaced-N`, not deleted."""
    module = ServingModule(model, class_names, image_size, top_k, crop_padding, logits=logits,
                           embedding=is_embedding_model(model))

    def build(path):
        tf.saved_model.save(module, path, signatures={SIGNATURE_IMAGES: module.serve_images,
                                                      SIGNATURE_BYTES: module.serve_bytes})
        if not module.embedding:  # an embedding model's training identities are not its outputs
            with open(os.path.join(path, "labels.txt"), "w") as f:
                f.write("\n".join(str(n) for n in class_names) + "\n")
        with open(os.path.join(path, "export.json"), "w") as f:
            json.dump(dict(metadata or {}, image_size=image_size, top_k=module.top_k,
                           outputs=["embedding"] if module.embedding else ["probabilities", "top_k_ids",
                                                                            "top_k_probabilities", "top_k_names"],
                           signatures=[SIGNATURE_IMAGES, SIGNATURE_BYTES]), f, indent=2)

    path, moved = replace_directory(build, export_dir)
    if moved:
        log.warning("%s held something: kept as %s", path, moved)
    return path


def is_embedding_model(model: keras.Model) -> bool:
    """Whether `model` ends in a recognition embedding (`build_model(embedding_dim=...)`)."""
    return any(layer.name == "embedding" for layer in model.layers)


def probability_model(model: keras.Model, normalized: bool = True) -> keras.Model:
    """Logits model -> probabilities (float32): the graph TFLite and ONNX convert. An embedding
    model is converted as it is (the L2-normalised embedding: a unit vector quantizes well), or
    with `normalized=False` up to its embedding before the normalization, which int16x8 needs
    (TFLite has no 16-bit kernel for the normalization's SQUARE op)."""
    if is_embedding_model(model):
        if normalized or "embedding_l2" not in {layer.name for layer in model.layers}:
            return model
        unnormalized = model.get_layer("embedding_l2").input
        return functional_model(model.input, unnormalized, f"{model.name}_embedding", max_layers=len(model.layers))
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(model.output)
    return functional_model(model.input, outputs, f"{model.name}_probabilities", max_layers=len(model.layers) + 1)


def _check_format(quantization: str, integer_io: str) -> None:
    if quantization not in TFLITE_QUANTIZATIONS:
        raise SettingError("tflite", f"unknown TFLite quantization {quantization!r}; choose from "
                           f"{', '.join(TFLITE_QUANTIZATIONS)}")
    if integer_io not in INTEGER_IO:
        raise SettingError("int8_io", f"integer_io must be one of {', '.join(INTEGER_IO)}, got {integer_io!r}")


def export_float_saved_model(model: keras.Model, path: str, quantization: str | None = None) -> str:
    """The probability model as a plain SavedModel: what the TFLite and ONNX converters read
    (for `quantization` int16x8, an embedding model's unnormalised embedding)."""
    probability_model(model, normalized=quantization != "int16x8").export(path, format="tf_saved_model", verbose=False)
    return path


class _FloatSavedModels:
    """The float SavedModel each TFLite format converts from, written once per kind in `root`."""

    def __init__(self, model: keras.Model, root: str):
        self.model, self.root, self.paths = model, root, {}

    def __call__(self, quantization: str | None = None) -> str:
        kind = "unnormalized" if quantization == "int16x8" and is_embedding_model(self.model) else "default"
        if kind not in self.paths:
            self.paths[kind] = export_float_saved_model(self.model, os.path.join(self.root, kind), quantization)
        return self.paths[kind]


def convert_tflite(model: keras.Model, quantization: str, representative_images: Iterable | None = None,
                   integer_io: str = "uint8") -> bytes:
    """One TFLite flatbuffer of `model` (logits out; the file outputs probabilities)."""
    _check_format(quantization, integer_io)
    with tempfile.TemporaryDirectory() as tmp:
        return convert_saved_model(export_float_saved_model(model, tmp, quantization), quantization,
                                   representative_images, integer_io)


def convert_saved_model(saved_model_dir: str, quantization: str, representative_images: Iterable | None = None,
                        integer_io: str = "uint8") -> bytes:
    """One TFLite flatbuffer from a float SavedModel (`export_float_saved_model`).

    int8: full-integer ops with `integer_io` (uint8|int8) input and output; int16x8: 16-bit
    activations, 8-bit weights, float I/O. Both calibrate on `representative_images`
    (float 0..255, one image or a batch per item).
    """
    _check_format(quantization, integer_io)
    if quantization in NEEDS_REPRESENTATIVE_DATA and representative_images is None:
        raise ValueError(f"{quantization} quantization needs representative images (from the training pipeline)")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
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


class OnnxRunner:
    """Runs a .onnx file with onnxruntime (CPU); images float 0..255 in, probabilities out."""

    io_types = "float32 in / float32 out"

    def __init__(self, model_path_or_content):
        import onnxruntime

        content = model_path_or_content
        if not isinstance(content, (bytes, bytearray)):
            content = os.fspath(content)
        self.session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(images, np.float32)})[0]


def convert_onnx(model: keras.Model, image_size: int, opset: int = ONNX_OPSET) -> bytes:
    """The probability model as ONNX (tf2onnx): input `images` (batch, size, size, 3) float 0..255."""
    require_onnx()
    import tf2onnx

    probabilities = probability_model(model)
    signature = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="images"),)
    function = tf.function(lambda images: probabilities(images, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    return proto.SerializeToString()


def export_tflite(model: keras.Model, export_dir: str, quantizations: Sequence[str] = TFLITE_QUANTIZATIONS,
                  representative_images: Iterable | None = None, integer_io: str = "uint8") -> dict[str, str]:
    """Write `model_<quantization>.tflite` files into export_dir (each written to a temporary
    file, then renamed; a file already there is kept as `<name>.replaced-N`); returns
    {quantization: path}."""
    for quantization in quantizations:
        _check_format(quantization, integer_io)
    os.makedirs(export_dir, exist_ok=True)
    images = list(representative_images) if representative_images is not None else None
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        float_models = _FloatSavedModels(model, tmp)
        for quantization in quantizations:
            content = convert_saved_model(float_models(quantization), quantization, images, integer_io)
            paths[quantization] = os.path.join(export_dir, f"model_{quantization}.tflite")
            if os.path.lexists(paths[quantization]):
                log.warning("%s existed: kept as %s", paths[quantization], move_aside(paths[quantization], "replaced"))
            atomic_write(paths[quantization], content)
    return paths


@dataclasses.dataclass(frozen=True)
class CheckImages:
    """The images an exported model is compared with the float model on. Agreement is model vs
    model and needs no labels, so it uses every image there is: the eval split first, then
    training images (eval preprocessing). Top-1 against labels uses the eval images only."""

    images: np.ndarray  # float 0..255; the first `num_eval` are the eval split
    num_eval: int
    eval_labels: np.ndarray | None  # None: another dataset's images, whose labels mean nothing here


def check_images_of(source, image_size: int, seed: int | None, count: int = 0, labels: bool = True) -> CheckImages:
    """Up to `count` images (0: all) of `source`: eval split, then training split."""
    if not count:  # "all" is for small datasets: the images are held in memory
        known = None if source.num_eval is None or source.num_train is None else source.num_eval + source.num_train
        if known is None or known * image_size * image_size * 3 * 4 > MAX_CHECK_BYTES:
            what = f"{known:,} images" if known else "every image of a dataset of unknown size"
            raise SettingError("check_images", f"check_images=0 would hold {what} of {image_size}x{image_size} in "
                               f"memory (more than {MAX_CHECK_BYTES >> 30} GB); give a count, e.g. 2000")
    wanted = count or 10**9
    images, eval_labels = _take_images(source, image_size, seed, wanted, training=False)
    num_eval = len(images)
    if num_eval < wanted:
        train_images, _ = _take_images(source, image_size, seed, wanted - num_eval, training=False, split="train")
        images = np.concatenate([images, train_images])
    return CheckImages(images, num_eval, eval_labels if labels else None)


def _predict(predict: Callable, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(predict(images[i:i + batch_size]), np.float32)
                           for i in range(0, len(images), batch_size)])


def batch1_latency_ms(runners: dict[str, Callable], images: np.ndarray, repeats: int = 20,
                      rounds: int = 3) -> dict[str, float]:
    """Median milliseconds per single-image call, the runners interleaved round by round so a
    busy moment of the machine does not fall on one of them only."""
    images = np.asarray(images, np.float32)
    times = {name: [] for name in runners}
    for runner in runners.values():
        runner(images[:1])  # warm-up (and the batch-1 allocation)
    for _ in range(rounds):
        for name, runner in runners.items():
            start = time.perf_counter()
            for i in range(repeats):
                runner(images[i % len(images):i % len(images) + 1])
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}


def agreement_report(model: keras.Model, paths: dict[str, str], images, labels=None, batch_size: int = 32,
                     num_eval: int | None = None) -> dict[str, dict]:
    """For each exported file (`.tflite` or `.onnx`, probabilities out): size, I/O types, top-1
    agreement with the float Keras `model` (logits out, as `load_trained_model` gives it) on all
    `images` and on the first `num_eval` (the eval split; default all),
    the largest probability difference, top-1 against `labels` (of the eval images) and its
    change from the float model, and batch-1 latency."""
    images = np.asarray(images, np.float32)
    num_eval = len(images) if num_eval is None else num_eval
    reference = _predict(lambda batch: tf.nn.softmax(model.predict_on_batch(batch)), images, batch_size)
    reference_top1 = reference.argmax(-1)
    labels = None if labels is None else np.asarray(labels)[:num_eval]
    runners = _runners(paths)
    report = {}
    for name, runner in runners.items():
        probabilities = _predict(runner, images, batch_size)
        top1 = probabilities.argmax(-1)
        entry = {"size_bytes": os.path.getsize(paths[name]), "io": runner.io_types,
                 "agreement": float(np.mean(top1 == reference_top1)), "images": int(len(images)),
                 "eval_agreement": float(np.mean(top1[:num_eval] == reference_top1[:num_eval])),
                 "eval_images": int(num_eval),
                 "max_abs_prob_diff": float(np.abs(probabilities - reference).max())}
        if labels is not None:
            entry["top1"] = float(np.mean(top1[:num_eval] == labels))
            entry["top1_change"] = entry["top1"] - float(np.mean(reference_top1[:num_eval] == labels))
        report[name] = entry
    _add_latency(report, runners, images)
    if labels is not None:
        # eval_images, not images: the float model's row gives top-1 on the eval split only
        report["keras_float32"] = {"top1": float(np.mean(reference_top1[:num_eval] == labels)),
                                   "eval_images": int(num_eval)}
    return report


def _runners(paths: dict[str, str]) -> dict[str, Callable]:
    """{name: runner} for exported `.tflite` and `.onnx` files."""
    return {name: (OnnxRunner if path.endswith(".onnx") else TFLiteRunner)(path) for name, path in paths.items()}


def _add_latency(report: dict[str, dict], runners: dict[str, Callable], images: np.ndarray) -> None:
    for name, latency in batch1_latency_ms(runners, images[:20]).items():
        report[name]["latency_ms_batch1"] = latency


def embedding_report(model: keras.Model, paths: dict[str, str], images, labels=None, batch_size: int = 32,
                     num_eval: int | None = None) -> dict[str, dict]:
    """`agreement_report` for an embedding model: for each exported file, size, I/O types, the
    mean and minimum cosine similarity of its embedding to the float Keras embedding on all
    `images` (and the mean on the first `num_eval`), the share of `images` whose nearest other
    image is the one the float model finds (`neighbour_agreement`), leave-one-out 1-NN retrieval
    top-1 on the first `num_eval` images by their identity `labels`, its change from the float
    model, the queries it lost and gained against the float model's and the exact sign test's
    p-value of that split (`retrieval_change_p`: small when the change is the format's, not a few
    near-ties falling either way), and batch-1 latency. An exported embedding row that is zero or
    non-finite (`zero_rows`, counted) has cosine 0 to the float one and is nobody's neighbour, so
    it lowers every measure instead of failing the format."""
    from efficientnet_tf.training.verification import (nearest_neighbours, paired_change_p_value, retrieval_hits,
                                                       unit_rows)

    images = np.asarray(images, np.float32)
    num_eval = len(images) if num_eval is None else num_eval
    reference = unit_rows(_predict(model.predict_on_batch, images, batch_size))
    reference_neighbours = nearest_neighbours(reference)
    labels = None if labels is None else np.asarray(labels)[:num_eval]
    if labels is not None and (len(labels) == 0 or np.unique(labels, return_counts=True)[1].max() < 2):
        log.warning("retrieval not measured: the %d eval images hold no identity twice (raise check_images)", len(labels))
        labels = None
    float_hits = None if labels is None else retrieval_hits(reference[:num_eval], labels)
    runners = _runners(paths)
    report = {}
    for name, runner in runners.items():
        embeddings = unit_rows(_predict(runner, images, batch_size), zero_rows="zero")
        cosines = np.sum(embeddings * reference, axis=-1)
        entry = {"size_bytes": os.path.getsize(paths[name]), "io": runner.io_types,
                 "mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()), "images": int(len(images)),
                 "eval_mean_cosine": float(cosines[:num_eval].mean()), "eval_images": int(num_eval),
                 "zero_rows": int((~embeddings.any(axis=1)).sum()),
                 "neighbour_agreement": float(np.mean(nearest_neighbours(embeddings, zero_rows="zero")
                                                      == reference_neighbours))}
        if labels is not None:
            hits = retrieval_hits(embeddings[:num_eval], labels, zero_rows="zero")
            lost, gained = int((float_hits & ~hits).sum()), int((hits & ~float_hits).sum())
            entry.update(retrieval_top1=float(hits.mean()), retrieval_top1_change=float(hits.mean() - float_hits.mean()),
                         retrieval_lost=lost, retrieval_gained=gained,
                         retrieval_change_p=paired_change_p_value(lost, gained))
        report[name] = entry
    _add_latency(report, runners, images)
    if labels is not None:
        report["keras_float32"] = {"retrieval_top1": float(float_hits.mean()), "eval_images": int(num_eval)}
    return report


# (heading, report key, format, width) of each column after model, size and I/O.
CLASSIFIER_COLUMNS = (("agree", "agreement", ".4f", 7), ("images", "images", "", 7), ("eval", "eval_agreement", ".4f", 7),
                      ("top-1", "top1", ".4f", 7), ("change", "top1_change", "+.4f", 7),
                      ("ms/img", "latency_ms_batch1", ".2f", 8))
EMBEDDING_COLUMNS = (("cos mean", "mean_cosine", ".5f", 8), ("cos min", "min_cosine", ".4f", 8),
                     ("same NN", "neighbour_agreement", ".4f", 7), ("images", "images", "", 7), ("retrieval", "retrieval_top1", ".4f", 9),
                     ("change", "retrieval_top1_change", "+.4f", 7), ("lost", "retrieval_lost", "", 5),
                     ("gained", "retrieval_gained", "", 6), ("p", "retrieval_change_p", ".2g", 7),
                     ("ms/img", "latency_ms_batch1", ".2f", 8))


def format_report(report: dict[str, dict]) -> str:
    """The report as a table: agreement on all images and on the eval split alone (images the
    model did not train on), top-1 on the eval split and its change, batch-1 latency; for an
    embedding model, the cosine to the float embedding (mean, minimum) on all images and the
    held-out retrieval top-1, its change, the queries lost and gained and the change's p-value instead."""
    embedding = any("retrieval_top1" in entry or "mean_cosine" in entry for entry in report.values())
    columns = EMBEDDING_COLUMNS if embedding else CLASSIFIER_COLUMNS
    lines = [f"{'model':<16} {'size':>10} {'I/O':<25} " + " ".join(f"{head:>{width}}" for head, _, _, width in columns)]
    for name, entry in report.items():
        size = f"{entry['size_bytes'] / 1e6:.2f} MB" if "size_bytes" in entry else "-"
        cells = (format(entry[key], spec) if key in entry else ("" if key == "images" else "-")
                 for _, key, spec, _ in columns)
        lines.append(f"{name:<16} {size:>10} {entry.get('io', 'float32'):<25} "
                     + " ".join(f"{cell:>{width}}" for cell, (_, _, _, width) in zip(cells, columns)))
    return "\n".join(lines)


def pipeline_images(model_dir: str, count: int, training: bool):
    """Images (float 0..255) and labels from a run's own data pipeline: the training pipeline
    (random crops, no RandAugment/mixup) for calibration, the eval pipeline for agreement."""
    config, info = load_run(model_dir)
    return _take_images(config.load_source("skip"), int(info["image_size"]), config.run.seed, count, training)


def _take_images(source, image_size: int, seed: int | None, count: int, training: bool, split: str | None = None,
                 shuffle: bool | None = None):
    pipeline = PipelineConfig(image_size=image_size, global_batch_size=min(count, 64), seed=seed, drop_remainder=False)
    if shuffle and not training:
        # A buffer of `count` decoded images, not training's 10,000: the files (a folder's: every
        # path) are shuffled before decoding anyway.
        pipeline = dataclasses.replace(pipeline, shuffle_buffer=max(1, min(count, pipeline.shuffle_buffer)))
    images, labels = [], []
    for batch_images, batch_labels in make_dataset(source, pipeline, training=training, repeat=training, split=split,
                                                   shuffle=shuffle):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
        if sum(len(b) for b in images) >= count:
            break
    images, labels = np.concatenate(images)[:count], np.concatenate(labels)[:count]
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    return images, labels


def export_run(model_dir: str, *, config: ExportConfig | None = None, top_k: int = 5, use_ema: bool = True,
               calibration_images: int = CALIBRATION_IMAGES, search_images: int = SEARCH_IMAGES, **settings) -> dict:
    """Export a run: `<export_dir>/saved_model/`, `<export_dir>/model_<q>.tflite`, `model.onnx`
    and `<export_dir>/export_report.json`. The export is built aside and moved in at the end; a
    format whose conversion fails is named in the report's `failed` and the others are still
    written. export_dir must be new, empty or an earlier export of this run (else SettingError,
    before any work); a re-export replaces only the files it writes and keeps the others
    (`deploy.destination`); a failure or Ctrl-C (`ExportInterrupted`) leaves it as it was.

    Args:
        model_dir: a training run's directory.
        config: what to write (`ExportConfig`: export_dir, tflite formats, check_images, int8_io,
            int8_target_agreement, int8_keep_float, int8_selective_search, onnx); or give those as
            keyword `settings`, e.g. `export_run(run, tflite=["int8"], onnx=True)`.
        top_k: classes each serving signature returns.
        use_ema: export the EMA weights when the run kept them.
        calibration_images: training-pipeline images the int8/int16x8 converters and
            int8_selective's ai-edge-quantizer calibrate on (and int8's per-op errors are measured on).
        search_images: training images (eval preprocessing; never the eval split) on which
            int8_selective's search measures agreement.

    Returns:
        The report (also in export_report.json): `files`, every file of the export with the
        checkpoint it came from, its size and SHA-256 (`kept`: those an earlier export wrote;
        `moved_aside`: files in the way, renamed); per exported file its agreement with the
        float model on `check_images` images (eval split first, then training images) and on the
        eval split alone, top-1 on the eval split and its change, batch-1 latency; with int8, each
        op's own quantization error (`int8_layer_errors`, drawn in int8_layer_errors.png); with
        int8_selective, the search that won, its ops (a dynamic-range head or a float tail) and every
        step of both searches (`int8_selective`).
    """
    if config is None:
        config = ExportConfig(**settings)
    elif settings:
        raise TypeError("pass either an ExportConfig or keyword settings, not both")
    config.validate()
    load_run(model_dir)  # not a run: say so before judging the destination
    destination = ExportDestination.check(config.export_dir or RunDir(model_dir).export, model_dir)
    try:
        return _export(model_dir, destination, config, top_k, use_ema, calibration_images, search_images)
    except KeyboardInterrupt:
        raise destination.interrupted() from None


def _export(model_dir: str, destination: ExportDestination, config: ExportConfig, top_k: int, use_ema: bool,
            calibration_images: int, search_images: int) -> dict:
    tflite = config.tflite
    model, info = load_trained_model(model_dir, use_ema=use_ema)
    if config.int8_keep_float is not None:  # before any file is written or converted
        keep_float_layers(config.int8_keep_float,
                          [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)])
    embedding = is_embedding_model(model)
    size = int(info["image_size"])
    report = {"model": info["model"], "dataset": info["dataset"], "checkpoint": info["checkpoint"], "ema": info["ema"],
              "image_size": size, "task": "embedding" if embedding else "classification"}
    representative = check = search = None
    if tflite or config.onnx:
        run_config, _ = load_run(model_dir)
        seed = run_config.run.seed
        source = _calibration_source(run_config, config.calibration_dataset)  # once: calibration and agreement
        if any(q in NEEDS_REPRESENTATIVE_DATA for q in tflite):
            representative, _ = _take_images(source, size, seed, calibration_images, training=True)
        if "int8_selective" in tflite:
            # Training images as the model will see them deployed (eval preprocessing): never the
            # eval split, whose agreement the report gives separately. Shuffled (seeded): a folder's
            # training split is in class order, and its first 2,000 images would be a few classes'.
            search, _ = _take_images(source, size, seed, search_images, training=False, split="train", shuffle=True)
        # Another dataset's labels are not this model's classes: agreement only.
        check = check_images_of(source, size, seed, config.check_images, labels=not config.calibration_dataset)

    def build(path):
        saved_model = os.path.join(path, "saved_model")
        export_saved_model(model, saved_model, info["class_names"], size, top_k, metadata=report)
        report["saved_model_bytes"] = _directory_size(saved_model)
        failed, paths = {}, {}
        if tflite:
            paths.update(_write_tflite(model, path, tflite, config, representative, search, report, failed))
        if config.onnx:
            _attempt(failed, "onnx", lambda: atomic_write(os.path.join(path, "model.onnx"), convert_onnx(model, size)))
            if "onnx" not in failed:
                paths["onnx"] = os.path.join(path, "model.onnx")
        if paths:
            compare = embedding_report if embedding else agreement_report
            compared = compare(model, paths, check.images, check.eval_labels, num_eval=check.num_eval)
            if "onnx" in compared:
                report["onnx"] = dict(compared.pop("onnx"), opset=ONNX_OPSET)
            if tflite:
                report["tflite"] = compared
        if failed:
            report["failed"] = failed

    staging = destination.staging()
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # made for this export alone
        raise
    report = destination.commit(staging, report)
    return dict(report, export_dir=destination.path)


def _attempt(failed: dict, name: str, step: Callable):
    """Run one format's step; a failure is recorded (one line) so the other formats still land."""
    try:
        return step()
    except Exception as err:  # noqa: BLE001  (any converter failure: reported, not fatal to the rest)
        failed[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        return None


def _write_tflite(model, path: str, formats: Sequence[str], config: ExportConfig, representative, search,
                  report: dict, failed: dict) -> dict[str, str]:
    """The TFLite files, the int8 per-op errors (+ plot) and the int8_selective search."""
    from efficientnet_tf.deploy.quantization import Int8Calibration, selective_int8
    from efficientnet_tf.plots import plot_layer_errors

    paths = {}

    def write(name: str, content: bytes) -> None:
        paths[name] = os.path.join(path, f"model_{name}.tflite")
        atomic_write(paths[name], content)

    with tempfile.TemporaryDirectory() as tmp:
        float_models = _FloatSavedModels(model, tmp)
        float32 = None  # the float32 file's bytes when written: the head search quantizes them too
        for quantization in (q for q in formats if q in TFLITE_QUANTIZATIONS):
            content = _attempt(failed, quantization, lambda q=quantization: convert_saved_model(
                float_models(q), q, representative, config.int8_io))
            if content is not None:
                write(quantization, content)
                float32 = content if quantization == "float32" else float32
        if not {"int8", "int8_selective"} & set(formats):
            return paths
        output_layer = model.layers[-1].name if is_embedding_model(model) else "probabilities"  # the graph's output
        calibration = _attempt(failed, "int8_layer_errors",
                               lambda: Int8Calibration(float_models(), representative, output_layer=output_layer))
        errors = calibration and _attempt(failed, "int8_layer_errors", calibration.layer_errors)
        if not errors:
            if "int8_selective" in formats:
                failed["int8_selective"] = failed.get("int8_layer_errors", "the int8 calibration found no quantized op")
            return paths
        report["int8_layer_errors"] = [e.as_dict() for e in errors]
        kept, kept_label = (), "kept in float by int8_selective"
        if "int8_selective" in formats:
            reference = _predict(model.predict_on_batch, search)
            if is_embedding_model(model):
                from efficientnet_tf.training.verification import nearest_neighbours

                # An embedding has no top-1 to agree on: the search's measure is how many search
                # images keep their nearest neighbour (what retrieval sees; a mean cosine to the
                # float embedding stays near 1 while neighbours swap).
                reference_neighbours = nearest_neighbours(reference)

                def agreement(content: bytes) -> float:
                    return float(np.mean(nearest_neighbours(_predict(TFLiteRunner(content), search), zero_rows="zero")
                                         == reference_neighbours))
            else:
                def agreement(content: bytes) -> float:
                    return float(np.mean(_predict(TFLiteRunner(content), search).argmax(-1) == reference.argmax(-1)))

            searches = config.int8_selective_search
            head, no_head = (_dynamic_head(float_models, representative, output_layer, float32)
                             if "dynamic_head" in searches
                             else (None, None))
            if head is None and "float_tail" not in searches:
                failed["int8_selective"] = f"its only search, dynamic_head, cannot run: {no_head}"
                chosen = None
            else:
                chosen = _attempt(failed, "int8_selective", lambda: selective_int8(
                    calibration, agreement, config.int8_target_agreement, keep_float=config.int8_keep_float,
                    head=head, float_tail="float_tail" in searches))
            if chosen is not None:
                content, search_report = chosen
                write("int8_selective", content)
                report["int8_selective"] = dict(search_report, search_images=int(len(search)),
                                                **({"head_search_skipped": no_head} if no_head else {}))
                if search_report["method"] == "float_tail":
                    kept = [entry["tensor"] for entry in search_report["kept_float"]]
                else:
                    head_layers = {entry["layer"] for entry in search_report["dynamic_head"] + search_report["kept_float"]}
                    kept = [e.tensor for e in errors if e.layer in head_layers]
                    kept_label = "layers int8_selective runs in dynamic-range int8 or float"
        try:
            plot_layer_errors(report["int8_layer_errors"], kept, os.path.join(path, LAYER_ERRORS_PNG),
                              kept_label=kept_label)
        except Exception as err:  # noqa: BLE001  (a figure is not worth failing the export for)
            log.warning("could not draw %s: %s", LAYER_ERRORS_PNG, err)
    return paths


def _dynamic_head(float_models: _FloatSavedModels, representative, output_layer: str, float32: bytes | None = None):
    """int8_selective's head search (`DynamicHeadInt8`) and None, or None and why it cannot run.
    `float32`: the float32 TFLite file's bytes, when already converted."""
    from efficientnet_tf.deploy.quantization import DynamicHeadInt8, edge_quantizer_missing

    missing = edge_quantizer_missing()
    if missing:
        return None, missing
    failed = {}
    head = _attempt(failed, "head", lambda: DynamicHeadInt8(
        float32 if float32 is not None else convert_saved_model(float_models(), "float32"), representative, output_layer))
    return head, failed.get("head")


def _calibration_source(run_config, calibration_dataset: str | None):
    """The dataset TFLite export calibrates on: the run's own, or `calibration_dataset`."""
    dataset = calibration_dataset or run_config.data.dataset
    try:
        if calibration_dataset:
            # Calibration needs no labels: any dataset, read as a plain one, except those that hold
            # identities only (glyphs), which are read as the embedding task reads them.
            task = "embedding" if calibration_dataset in EMBEDDING_ONLY_SOURCES else "classification"
            return run_config.replace(dataset=calibration_dataset, label_key="label", task=task).load_source("skip")
        return run_config.load_source("skip")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"TFLite and ONNX export calibrate on and check against images of the run's dataset, but {dataset!r} "
            f"cannot be loaded here ({err}). Export the SavedModel only (no TFLite formats, no ONNX), or name "
            "another dataset of similar images as calibration_dataset (a classification dataset, or one that holds "
            f"identities only: {', '.join(EMBEDDING_ONLY_SOURCES)})") from None


def _directory_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
