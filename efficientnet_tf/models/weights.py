"""Pretrained weights: the official keras.applications HDF5 files, or any local file."""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile

import h5py
import keras
import numpy as np

from efficientnet_tf._lazy import moved_names
from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.models.configs import REGISTRY, ModelConfig
from efficientnet_tf.models.downloads import download

log = logging.getLogger(__name__)

V1_BASE_URL = "https://storage.googleapis.com/keras-applications/"
V2_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
# md5 of (with top, without top), as published in keras.applications.
FILE_HASHES = {
    "efficientnetb0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "efficientnetb1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "efficientnetb2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "efficientnetb3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "efficientnetb4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "efficientnetb5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "efficientnetb6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "efficientnetb7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
    "efficientnetv2-b0": ("21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff"),
    "efficientnetv2-b1": ("069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37"),
    "efficientnetv2-b2": ("424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb"),
    "efficientnetv2-b3": ("1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856"),
    "efficientnetv2-s": ("e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070"),
    "efficientnetv2-m": ("a3bf6aa3276309f4fc6a34aa114c95cd", "1b8dc055df72dde80d614482840fe342"),
    "efficientnetv2-l": ("27e6d408b53c7ebc868fefa357689935", "b0b66b5c863aef5b46e8608fe1711615"),
}
# Layers that belong to a task head, not the backbone: never required to be in a weight file.
HEAD_LAYERS = ("predictions", "embedding")


def models_with_imagenet_weights() -> list[str]:
    return [name for name, c in REGISTRY.items() if c.keras_weights]


def _has_imagenet_top(model: keras.Model) -> bool:
    try:
        head = model.get_layer("predictions")
    except ValueError:
        return False
    return head.units == 1000


def imagenet_weights_file(config: ModelConfig, include_top: bool) -> tuple[str, str, str]:
    """(file name, URL, md5) of the official keras.applications file for `config`."""
    if not config.keras_weights:
        from efficientnet_tf.models.official import list_weights

        others = [part for family in list_weights(config) for part in (" or ", Arg("weights", family))][1:]
        raise advised(
            ValueError, f"no ImageNet weights are published in keras.applications for {config.name!r}",
            *((" (its official checkpoints: ", *others, ")") if others else ()),
            "; models with ", Arg("weights", "imagenet"), f": {', '.join(models_with_imagenet_weights())}"
        )
    stem = config.keras_weights
    fname = stem + (".h5" if include_top else "_notop.h5")
    base = V2_BASE_URL if config.family == "v2" else V1_BASE_URL
    return fname, base + fname, FILE_HASHES[stem][0 if include_top else 1]


def fetch_imagenet_weights(config: ModelConfig, include_top: bool) -> str:
    """Download (once; cached in ~/.keras/models) and return the local path."""
    fname, url, md5 = imagenet_weights_file(config, include_top)
    return download(fname, url, f"the ImageNet weights for {config.name}", md5=md5,
                    offline_hint=(" or pass ", Arg("weights", f"/path/to/{fname}"), "."))


def _weighted_layers(model: keras.Model):
    """(layer, variables) in Keras' legacy HDF5 order: trainable first, then the rest."""
    out = []
    for layer in model.layers:
        variables = layer.trainable_weights + layer.non_trainable_weights
        if variables:
            out.append((layer, variables))
    return out


def _read_h5_layers(path: str):
    """[(layer name, [arrays])] for the weighted layers of a legacy HDF5 file, in file order."""
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path} is not a Keras HDF5 weight file (no 'layer_names' attribute)")
        result = []
        for name in group.attrs["layer_names"]:
            name = name.decode("utf8") if isinstance(name, bytes) else str(name)
            layer_group = group[name]
            weight_names = [
                w.decode("utf8") if isinstance(w, bytes) else str(w)
                for w in layer_group.attrs.get("weight_names", [])
            ]
            if weight_names:
                result.append((name, [np.asarray(layer_group[w]) for w in weight_names]))
    return result


def load_legacy_h5(model: keras.Model, path: str) -> list[str]:
    """Order-based load of a keras.applications-style HDF5 file into `model`.

    Backbone layers must match one to one (shapes checked); a classifier in the file is
    loaded only when the model has one of the same shape, otherwise the model keeps its
    fresh head (transfer learning), with a warning. Returns the names of the model layers left
    untouched.
    """
    return _assign(model, path, _read_h5_layers(path))


def _snake_case(name: str) -> str:
    """Keras 3's name for a layer class in its weight files (`DepthwiseConv2D` -> `depthwise_conv2d`)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# Our layers that stand where keras.applications has a built-in one: its files name them so.
_KERAS_KINDS = {"std_normalization": ("std_normalization", "normalization")}


def _read_keras3_groups(path: str) -> dict[str, list[np.ndarray]]:
    """{object key: arrays} of the layers with variables in a Keras 3 weight file (`.weights.h5`,
    or the `model.weights.h5` inside a `.keras` archive)."""
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                data = io.BytesIO(archive.read("model.weights.h5"))
        except (zipfile.BadZipFile, KeyError) as err:
            raise ValueError(f"{path} is not a Keras 3 .keras archive with model weights ({err})") from None
        handle = h5py.File(data, "r")
    else:
        handle = h5py.File(path, "r")
    with handle as f:
        if "layers" not in f:
            raise ValueError(f"{path} is not a Keras 3 weight file (no 'layers' group)")
        groups = {}
        for key, group in f["layers"].items():
            variables = group.get("vars")
            if variables is not None and len(variables):
                groups[key] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    return groups


def _keras3_layers_in_model_order(model: keras.Model, path: str) -> list[tuple[str, list[np.ndarray]]]:
    """The layers of a Keras 3 weight file as [(model layer name, arrays)] in the model's order.

    Keras 3 files name each layer by its class and its rank among the model's layers of that
    class (`conv2d`, `conv2d_1`, ...), not by its layer name; keras.applications and this
    project create the same layers in the same order, so the k-th layer of a class here is the
    k-th of that class in the file. A file's classifier is matched to this model's, if any.
    """
    groups = _read_keras3_groups(path)
    file_body = [key for key in groups if not re.fullmatch(r"dense(?:_\d+)?", key)]  # Dense: only heads
    model_body = [layer for layer, _ in _weighted_layers(model) if layer.name not in HEAD_LAYERS]
    if len(file_body) != len(model_body):
        raise ValueError(f"weight file {path} has {len(file_body)} weighted backbone layers but model "
                         f"{model.name!r} has {len(model_body)}: is the file for another variant?")
    by_kind: dict[str, list[str]] = {}
    for key in groups:
        match = re.fullmatch(r"(.+?)(?:_(\d+))?", key)
        by_kind.setdefault(match.group(1), []).append(key)
    for keys in by_kind.values():
        keys.sort(key=lambda k: int(re.fullmatch(r".+?(?:_(\d+))?", k).group(1) or 0))
    taken: dict[str, int] = {}
    ordered = []
    for layer, _ in _weighted_layers(model):
        kind = _snake_case(type(layer).__name__)
        keys = next((by_kind[k] for k in _KERAS_KINDS.get(kind, (kind,)) if k in by_kind), [])
        rank = taken.get(kind, 0)
        taken[kind] = rank + 1
        if rank < len(keys):
            ordered.append((layer.name, groups[keys[rank]]))
    return ordered


def _assign(model: keras.Model, path: str, file_layers) -> list[str]:
    """Load [(name, arrays)] (weighted layers in model order; heads by name) into `model`."""
    file_head = {n: w for n, w in file_layers if n in HEAD_LAYERS}
    file_body = [(n, w) for n, w in file_layers if n not in HEAD_LAYERS]
    model_layers = _weighted_layers(model)
    model_head = [(l, v) for l, v in model_layers if l.name in HEAD_LAYERS]
    model_body = [(l, v) for l, v in model_layers if l.name not in HEAD_LAYERS]
    if len(file_body) != len(model_body):
        raise ValueError(
            f"weight file {path} has {len(file_body)} weighted backbone layers but model "
            f"{model.name!r} has {len(model_body)}: is the file for another variant?"
        )
    assignments = []
    for (layer, variables), (file_name, values) in zip(model_body, file_body):
        _check_shapes(path, layer, variables, file_name, values)
        assignments.append((variables, values))
    skipped = []
    for layer, variables in model_head:
        values = file_head.get(layer.name)
        if values is not None and [tuple(v.shape) for v in variables] == [v.shape for v in values]:
            assignments.append((variables, values))
        else:
            skipped.append(layer.name)
    # Assign only after every check passed, so a bad file leaves the model untouched.
    for variables, values in assignments:
        for variable, value in zip(variables, values):
            variable.assign(value.astype(variable.dtype))
    if skipped:
        log.warning("weights from %s: the head layer(s) %s were not in the file (or had another shape), so they "
                    "keep their random initialisation: train them before predicting", path, ", ".join(skipped))
    return skipped


def _check_shapes(path, layer, variables, file_name, values):
    expected = [tuple(v.shape) for v in variables]
    found = [tuple(v.shape) for v in values]
    if expected != found:
        raise ValueError(
            f"weight file {path}: layer {file_name!r} has weight shapes {found}, but model "
            f"layer {layer.name!r} expects {expected}: is the file for another variant?"
        )


WEIGHT_FILE_EXTENSIONS = (".weights.h5", ".keras", ".h5", ".hdf5")


def check_weights_file(config: ModelConfig, path: str) -> None:
    """Raise, before anything is built, for `weights` that are neither pretrained weights of
    `config` nor an existing file: ValueError for a name (a bad argument value, as
    keras.applications says it), FileNotFoundError for what reads as a path (a directory in it,
    or a weight file's extension)."""
    if os.path.exists(path):
        return
    from efficientnet_tf.models import official

    known = ", ".join(repr(w) for w in official.list_weights(config))
    is_path = any(sep in path for sep in (os.sep, os.altsep) if sep) or path.lower().endswith(WEIGHT_FILE_EXTENSIONS)
    what = "no such file, and not" if is_path else "neither a file nor"
    raise advised(
        FileNotFoundError if is_path else ValueError,
        f"weights {path!r} is {what} pretrained weights of {config.name} ({known or 'none'}); pass one of those, "
        "the path of a .h5 / .weights.h5 / .keras file, or ", Arg("weights", None), " (random initialisation)")


def load_weights(model: keras.Model, config: ModelConfig, weights: str) -> list[str]:
    """Initialise `model` from 'imagenet', an official checkpoint family (`list_weights`) or a
    weight file: a legacy `.h5` (keras.applications' official files), a Keras 3 `.weights.h5` or
    a `.keras` model, from keras.applications or from this project, with or without the top.
    Returns the head layers left randomly initialised (another class count, or a file without
    the top), each named in a warning."""
    from efficientnet_tf.models import official

    family = official.family_for(config, weights)
    if family is not None:
        path = official.official_weights_file(config, family)
    elif weights == "imagenet":
        path = fetch_imagenet_weights(config, include_top=_has_imagenet_top(model))
    else:
        path = os.fspath(weights)
        check_weights_file(config, path)
    if path.endswith((".weights.h5", ".keras")):
        return _assign(model, path, _keras3_layers_in_model_order(model, path))
    if path.endswith((".h5", ".hdf5")):
        return load_legacy_h5(model, path)
    else:
        raise ValueError(
            f"unsupported weights file {path!r}: expected .h5/.hdf5 (keras.applications), "
            ".weights.h5 or .keras"
        )


# `keras_models_dir` lived here before `downloads`: still importable from here for one release.
__getattr__, __dir__ = moved_names(__name__, {"keras_models_dir": "efficientnet_tf.models.downloads"}, globals())
