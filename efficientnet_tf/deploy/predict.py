"""Top-k predictions for image files from a training run, an exported SavedModel, or a model
with ImageNet weights (class names shipped in the package)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from efficientnet_tf.advice import Call, advised
from efficientnet_tf.data.image_io import SUPPORTED_FORMATS, check_image_bytes
from efficientnet_tf.data.pipeline import preprocess_eval
from efficientnet_tf.data.sources import IMAGE_EXTENSIONS, imagenet21k_class_names, imagenet_class_names
from efficientnet_tf.data.pixels import warn_if_unit_scaled
from efficientnet_tf.deploy.serving import SIGNATURE_BYTES, SIGNATURE_IMAGES, ServingModule


def read_image_bytes(path: str) -> bytes:
    """The encoded file, after checking that the training/serving decoder reads it: a bad file
    fails here, by name."""
    if os.path.isdir(path):
        error = IsADirectoryError(f"image {path!r} is a directory, not an image file: give image files, one path "
                                  f"each{_images_in(path)}")
        error.path = path  # `filename` would make str(error) OSError's "[Errno ...]" form
        raise error
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    reason = check_image_bytes(data) if data else "empty file"
    if reason is not None:
        raise ValueError(f"cannot read image {path!r}: not a valid {SUPPORTED_FORMATS} file: {reason}")
    return data


def _images_in(directory: str, shown: int = 3) -> str:
    """' (it holds N image files: a.jpg, b.png, ...)', by file name; '' when it holds none."""
    names = sorted(name for name in os.listdir(directory) if name.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(directory, name)))
    if not names:
        return ""
    listed = ", ".join(os.path.join(directory, name) for name in names[:shown])
    return f" (it holds {len(names)} image file(s): {listed}{', ...' if len(names) > shown else ''})"


_EXPORT_RUN = Call("efficientnet_tf.deploy.export.export_run")
_EMBEDDING_MODEL = ("{what} is a recognition embedding model: it has no classes to predict. Its SavedModel export "
                    "returns the L2-normalised embedding (output 'embedding'); compare two images by the cosine "
                    "similarity of their embeddings (docs/recognition.md)")


class Predictor:
    """Top-k predictions for image files (encoded bytes, decoded in the serving graph) or for
    in-memory images (any size, RGB 0..255; cropped and resized as the eval pipeline does)."""

    def __init__(self, serve_bytes, description: str, serve_images=None, image_size: int | None = None,
                 crop_padding: int = 32):
        self._serve = serve_bytes
        self._serve_images = serve_images  # float [N, size, size, 3] 0..255 -> the same outputs
        self.image_size = image_size
        self.crop_padding = crop_padding
        self.description = description

    @classmethod
    def from_model(cls, model, class_names: Sequence[str], image_size: int, top_k: int = 5, logits: bool = True,
                   description: str | None = None) -> Predictor:
        """A Keras model taking [N, image_size, image_size, 3] pixels 0..255 (logits out, or
        probabilities with logits=False), served exactly as its SavedModel export would be."""
        module = ServingModule(model, class_names, image_size, top_k, logits=logits)
        return cls(module.serve_bytes, description or model.name, module.serve_images, module.image_size,
                   module.crop_padding)

    @classmethod
    def from_saved_model(cls, path: str) -> Predictor:
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise advised(FileNotFoundError, f"{path!r} is not a SavedModel directory (no saved_model.pb); export "
                          "one with ", _EXPORT_RUN)
        loaded = tf.saved_model.load(path)
        if SIGNATURE_BYTES not in loaded.signatures:
            raise advised(ValueError, f"SavedModel {path!r} has no {SIGNATURE_BYTES!r} signature (signatures: "
                          f"{', '.join(loaded.signatures)}); export its run with ", _EXPORT_RUN)
        signature = loaded.signatures[SIGNATURE_BYTES]
        if "embedding" in signature.structured_outputs:
            raise ValueError(_EMBEDDING_MODEL.format(what=f"SavedModel {path!r}"))
        serve_images = image_size = None
        if SIGNATURE_IMAGES in loaded.signatures:
            images_signature = loaded.signatures[SIGNATURE_IMAGES]
            image_size = int(images_signature.structured_input_signature[1]["images"].shape[1])

            def serve_images(images):
                return images_signature(images=images)

        predictor = cls(lambda data: signature(image_bytes=data), f"SavedModel {path}", serve_images, image_size)
        predictor._loaded = loaded  # keep the variables alive
        return predictor

    @classmethod
    def from_run(cls, model_dir: str, top_k: int = 5) -> Predictor:
        from efficientnet_tf.deploy.export import load_trained_model
        from efficientnet_tf.training.rundir import load_run

        if load_run(model_dir)[0].recognition.embedding:
            raise ValueError(_EMBEDDING_MODEL.format(what=f"run {model_dir!r}"))
        model, info = load_trained_model(model_dir)
        return cls.from_model(model, info["class_names"], int(info["image_size"]), top_k,
                              description=f"{info['model']} from {info['checkpoint']}"
                              + (" (EMA weights)" if info["ema"] else ""))

    @classmethod
    def from_pretrained(cls, model_name: str, weights: str = "imagenet", top_k: int = 5) -> Predictor:
        from efficientnet_tf.models.factory import build_model
        from efficientnet_tf.models.official import IMAGENET21K_CLASSES, default_num_classes, resolve_weights
        from efficientnet_tf.models.weights import load_weights

        config, family = resolve_weights(model_name, weights)  # the family's normalization and resolution
        num_classes = default_num_classes(family)
        # ImageNet-21k is multi-label (automl scores it with sigmoids); ImageNet-1k is softmax.
        model = build_model(config, num_classes=num_classes,
                            classifier_activation="sigmoid" if num_classes == IMAGENET21K_CLASSES else "softmax")
        random_head = load_weights(model, config, weights)
        if random_head:
            raise ValueError(f"weights {weights!r} hold no ImageNet classifier for {model_name} (a file without the "
                             "top, or for another class count): its predictions would come from a random head. "
                             "Use a file with the top, or predict with a trained run's model_dir")
        resolution = config.resolution
        names = imagenet21k_class_names() if num_classes == IMAGENET21K_CLASSES else imagenet_class_names()
        return cls.from_model(model, names, resolution, top_k, logits=False,
                              description=f"{model_name} with {weights} weights")

    def __call__(self, paths: Sequence[str]) -> list[list[tuple[str, float]]]:
        """[(class name, probability)] for the exported top-k of each file, best first."""
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError(f"pass a list of image paths, not one path ({paths!r}): e.g. predictor([path])")
        if not paths:
            raise ValueError("no image path given")
        return self.predict_bytes([read_image_bytes(p) for p in paths])

    def predict_bytes(self, encoded: Sequence[bytes]) -> list[list[tuple[str, float]]]:
        """Like calling with files, for their encoded bytes (JPEG, PNG, ...; `read_image_bytes`
        reads a file and checks that the decoder takes it)."""
        if not encoded:
            raise ValueError("no image given")
        return _top_k(self._serve(tf.constant(list(encoded))))

    def predict_images(self, images) -> list[list[tuple[str, float]]]:
        """Like calling with files, for decoded images: one image [H, W, 3] or a batch
        [N, H, W, 3] (or a list of images of different sizes), uint8 or float, RGB 0..255.

        Each image gets the eval center crop and resize the file path gets after decoding, so an
        array and the PNG of the same pixels predict the same. Images that look scaled to 0..1
        warn once (the models take 0..255).
        """
        if self._serve_images is None:
            raise ValueError(f"{self.description} has no {SIGNATURE_IMAGES!r} signature for decoded images; "
                             "pass image files instead")
        batch = [np.asarray(image) for image in images] if isinstance(images, (list, tuple)) else None
        if batch is None:
            array = np.asarray(images)
            batch = [array] if array.ndim == 3 else list(array)
        if not batch:
            raise ValueError("no image given")
        for image in batch:
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"each image must be [height, width, 3] RGB, got shape {image.shape}")
        warn_if_unit_scaled(batch, "Predictor")
        prepared = tf.stack([preprocess_eval(tf.convert_to_tensor(image), self.image_size, self.crop_padding)
                             for image in batch])
        return _top_k(self._serve_images(prepared))


def _top_k(outputs) -> list[list[tuple[str, float]]]:
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
