"""Export a trained run: SavedModel with serving signatures, TFLite (float and quantized), ONNX,
and the agreement of each with the float model.

An export is built next to its destination and moved in at the end (`deploy.destination`: what
may be written where, and how a re-export keeps the files it does not rewrite). This module loads
the run's model and writes each format into the export, recording a format whose conversion
fails; the formats are `deploy.saved_model`, `deploy.tflite` (int8 and int8_selective:
`deploy.quantization`, `deploy.int8_search`) and `deploy.onnx`, the images they calibrate and are
checked on `deploy.calibration`, their comparison with the float model `deploy.reports`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.data.pipeline import CALIBRATION_IMAGES
from efficientnet_tf._lazy import moved_names
from efficientnet_tf.deploy.calibration import SEARCH_IMAGES, _calibration_source, _take_images, check_images_of
from efficientnet_tf.deploy.destination import ExportDestination
from efficientnet_tf.deploy.config import ONNX_OPSET, TFLITE_QUANTIZATIONS, ExportConfig, keep_float_layers
from efficientnet_tf.deploy.onnx import convert_onnx
from efficientnet_tf.deploy.reports import _predict, agreement_report, embedding_report
from efficientnet_tf.deploy.saved_model import _FloatSavedModels, export_saved_model, is_embedding_model
from efficientnet_tf.deploy.tflite import NEEDS_REPRESENTATIVE_DATA, TFLiteRunner, convert_saved_model
from efficientnet_tf.files import atomic_write
from efficientnet_tf.models.factory import build_model
from efficientnet_tf.models.official import resolve_weights
from efficientnet_tf.models.scopes import dtype_policy
from efficientnet_tf.training.checkpoints import restore_newest_readable
from efficientnet_tf.training.ema import WeightAverage
from efficientnet_tf.training.rundir import RunDir, load_run

log = logging.getLogger(__name__)

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
    from efficientnet_tf.deploy.int8_search import selective_int8
    from efficientnet_tf.deploy.quantization import Int8Calibration
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


def _directory_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


# What this module held or imported before the split (0.1), importable here for one release
# with a FutureWarning; what it still uses itself is imported above and stays without one.
_MOVED = {
    **dict.fromkeys(("probability_model", "export_float_saved_model"), "efficientnet_tf.deploy.saved_model"),
    **dict.fromkeys(("convert_tflite", "export_tflite", "_check_format"), "efficientnet_tf.deploy.tflite"),
    "OnnxRunner": "efficientnet_tf.deploy.onnx",
    **dict.fromkeys(("batch1_latency_ms", "format_report", "CLASSIFIER_COLUMNS", "EMBEDDING_COLUMNS", "_runners",
                     "_add_latency"), "efficientnet_tf.deploy.reports"),
    **dict.fromkeys(("CheckImages", "pipeline_images", "MAX_CHECK_BYTES"), "efficientnet_tf.deploy.calibration"),
    **dict.fromkeys(("ServingModule", "SIGNATURE_BYTES", "SIGNATURE_IMAGES"), "efficientnet_tf.deploy.serving"),
    **dict.fromkeys(("INTEGER_IO", "require_onnx"), "efficientnet_tf.deploy.config"),
    **dict.fromkeys(("PipelineConfig", "make_dataset"), "efficientnet_tf.data.pipeline"),
    "EMBEDDING_ONLY_SOURCES": "efficientnet_tf.data.sources",
    **dict.fromkeys(("move_aside", "replace_directory"), "efficientnet_tf.files"),
    "functional_model": "efficientnet_tf.models.functional",
    "SettingError": "efficientnet_tf.settings",
}
__getattr__, __dir__ = moved_names(__name__, _MOVED, globals())
