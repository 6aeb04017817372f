"""Top-k predictions for image files from a training run, an exported SavedModel, or a model
with ImageNet weights (class names shipped in the package)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources

import tensorflow as tf

from efficientnet_tf.export import SIGNATURE_BYTES, ServingModule


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in the order of the official weights' outputs."""
    text = resources.files("efficientnet_tf").joinpath("imagenet_classes.txt").read_text(encoding="utf8")
    names = [line for line in text.splitlines() if line]
    assert len(names) == 1000, f"imagenet_classes.txt has {len(names)} names, expected 1000"
    return names


def read_image_bytes(path: str) -> bytes:
    """The encoded file, after checking it decodes: a bad file fails here, by name."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
        raise ValueError(f"cannot read image {path!r}: not a valid JPEG, PNG, GIF or BMP file "
                         f"({err.message.splitlines()[0] if err.message else type(err).__name__})") from None
    return data


class Predictor:
    """Wraps a function from encoded image bytes to the serving outputs (probabilities, top-k)."""

    def __init__(self, serve_bytes, description: str):
        self._serve = serve_bytes
        self.description = description

    @classmethod
    def from_saved_model(cls, path: str) -> Predictor:
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"{path!r} is not a SavedModel directory (no saved_model.pb); "
                                    "export one with --mode=export")
        loaded = tf.saved_model.load(path)
        if SIGNATURE_BYTES not in loaded.signatures:
            raise ValueError(f"SavedModel {path!r} has no {SIGNATURE_BYTES!r} signature (signatures: "
                             f"{', '.join(loaded.signatures)}); export it with efficientnet_tf")
        signature = loaded.signatures[SIGNATURE_BYTES]
        predictor = cls(lambda data: signature(image_bytes=data), f"SavedModel {path}")
        predictor._loaded = loaded  # keep the variables alive
        return predictor

    @classmethod
    def from_run(cls, model_dir: str, top_k: int = 5) -> Predictor:
        from efficientnet_tf.export import load_trained_model

        model, info = load_trained_model(model_dir)
        module = ServingModule(model, info["class_names"], int(info["image_size"]), top_k)
        return cls(module.serve_bytes, f"{info['model']} from {info['checkpoint']}"
                   + (" (EMA weights)" if info["ema"] else ""))

    @classmethod
    def from_pretrained(cls, model_name: str, weights: str = "imagenet", top_k: int = 5) -> Predictor:
        from efficientnet_tf.builder import build_model
        from efficientnet_tf.configs import get_config

        resolution = get_config(model_name).resolution
        model = build_model(model_name, weights=weights)  # softmax outputs, ImageNet head
        module = ServingModule(model, imagenet_class_names(), resolution, top_k, logits=False)
        return cls(module.serve_bytes, f"{model_name} with {weights} weights")

    def __call__(self, paths: Sequence[str]) -> list[list[tuple[str, float]]]:
        """[(class name, probability)] for the exported top-k of each file, best first."""
        if not paths:
            raise ValueError("no image given: pass --image=PATH (several allowed)")
        outputs = self._serve(tf.constant([read_image_bytes(p) for p in paths]))
        names = outputs["top_k_names"].numpy()
        probabilities = outputs["top_k_probabilities"].numpy()
        return [[(n.decode(), float(p)) for n, p in zip(row_names, row_probs)]
                for row_names, row_probs in zip(names, probabilities)]


def format_predictions(paths: Sequence[str], results) -> str:
    lines = []
    for path, top in zip(paths, results):
        lines.append(path)
        for rank, (name, probability) in enumerate(top, 1):
            lines.append(f"  {rank}. {name:<40} {probability:.4f}")
    return "\n".join(lines)
