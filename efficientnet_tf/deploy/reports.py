"""How each exported file (.tflite, .onnx) compares with the float Keras model: top-1 agreement
and top-1 for a classifier; cosine, nearest neighbours and retrieval for an embedding; batch-1
latency; and the table that prints it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.deploy.onnx import OnnxRunner
from efficientnet_tf.deploy.tflite import TFLiteRunner

log = logging.getLogger(__name__)


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
