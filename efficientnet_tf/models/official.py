"""Google's official EfficientNet checkpoints (tensorflow/tpu, google/automl) as Keras weights.

Each weight family is one frozen `WeightFamily`: where its TF checkpoints are published, the
ImageNet top-1 the reference README reports for each variant, how many classes its head has and
how its inputs were normalized. `convert_checkpoint` maps every checkpoint variable to this
project's layers by the reference code's variable names (`efficientnet-b0/blocks_3/conv2d/kernel`,
`.../tpu_batch_normalization_1/gamma`, `efficientnetv2-s/head/dense/bias`), reading the EMA shadow
(`.../ExponentialMovingAverage`) that the papers evaluate with where the checkpoint has one.
`official_weights_file` downloads an archive once, converts it once and caches the result as a
Keras `.weights.h5` file next to keras.applications' files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tarfile
import tempfile

import keras
import numpy as np

from efficientnet_tf.models import configs
from efficientnet_tf.models.configs import ModelConfig

log = logging.getLogger(__name__)

TPU_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
V2_URL = TPU_URL + "v2/"
IMAGENET_CLASSES = 1000
IMAGENET21K_CLASSES = 21843
EMA_SUFFIX = "/ExponentialMovingAverage"
# Checkpoint entries that are training state, not weights: the step and optimizer slots.
_TRAINING_STATE = re.compile(r"(^|/)global_step$|/(RMSProp|RMSProp_1|Momentum|Adam|Adam_1)$")

# Input normalization a family was trained with, when it is not the variant's own (ModelConfig.preprocessing).
NORMALIZE_INCEPTION = "inception"  # x * 2 / 255 - 1 (AdvProp, eval_ckpt_main.py --advprop_preprocessing)


@dataclasses.dataclass(frozen=True)
class WeightFamily:
    """One published set of checkpoints: the same training recipe for several variants."""

    name: str
    description: str
    reference: str  # the repository whose code wrote (and reads) the checkpoints
    # variant -> (archive URL, ImageNet-1k top-1 % from the reference README, or None)
    variants: dict[str, tuple[str, float | None]]
    num_classes: int = IMAGENET_CLASSES
    normalization: str | None = None  # None: the variant's own; or NORMALIZE_INCEPTION / configs.PREPROCESS_*
    resolution: int | None = None  # evaluation size when the family's differs from the variant's

    def url(self, variant: str) -> str:
        return self.variants[variant][0]

    def top1(self, variant: str) -> float | None:
        return self.variants[variant][1]


def _v1(folder, pattern, top1s):
    return {f"efficientnet-{v}": (TPU_URL + folder + pattern.format(v), t) for v, t in top1s.items()}


def _v2(suffix, top1s):
    return {f"efficientnetv2-{v}": (f"{V2_URL}efficientnetv2-{v}{suffix}.tgz", t) for v, t in top1s.items()}


FAMILIES: dict[str, WeightFamily] = {f.name: f for f in (
    WeightFamily("baseline", "ImageNet, ResNet preprocessing (the ICML paper's recipe)", "tensorflow/tpu",
                 _v1("ckpts/", "efficientnet-{}.tar.gz",
                     {"b0": 76.7, "b1": 78.7, "b2": 79.8, "b3": 81.1, "b4": 82.5, "b5": 83.1})),
    WeightFamily("autoaugment", "ImageNet with AutoAugment (keras.applications' V1 weights)", "tensorflow/tpu",
                 _v1("ckptsaug/", "efficientnet-{}.tar.gz",
                     {"b0": 77.1, "b1": 79.1, "b2": 80.1, "b3": 81.6, "b4": 82.9, "b5": 83.6, "b6": 84.0,
                      "b7": 84.3})),
    WeightFamily("randaugment", "ImageNet with RandAugment", "tensorflow/tpu",
                 _v1("randaug/", "efficientnet-{}-randaug.tar.gz", {"b5": 83.7, "b7": 84.7})),
    WeightFamily("advprop", "ImageNet with AdvProp + AutoAugment; inputs scaled to [-1, 1]", "tensorflow/tpu",
                 _v1("advprop/", "efficientnet-{}.tar.gz",
                     {"b0": 77.6, "b1": 79.6, "b2": 80.5, "b3": 81.9, "b4": 83.3, "b5": 84.3, "b6": 84.8,
                      "b7": 85.2, "b8": 85.5}),
                 normalization=NORMALIZE_INCEPTION),
    WeightFamily("noisy-student", "NoisyStudent + RandAugment (ImageNet + unlabeled JFT-300M)", "tensorflow/tpu",
                 _v1("noisystudent/", "noisy_student_efficientnet-{}.tar.gz",
                     {"b0": 78.8, "b1": 81.5, "b2": 82.4, "b3": 84.1, "b4": 85.3, "b5": 86.1, "b6": 86.4,
                      "b7": 86.9, "l2": 88.4})),
    WeightFamily("noisy-student-475", "NoisyStudent L2 evaluated at 475 px", "tensorflow/tpu",
                 _v1("noisystudent/", "noisy_student_efficientnet-{}_475.tar.gz", {"l2": 88.2}), resolution=475),
    WeightFamily("lite", "EfficientNet-Lite on ImageNet (the float checkpoints behind the int8 TFLite files)",
                 "tensorflow/tpu",
                 _v1("lite/", "efficientnet-{}.tar.gz",
                     {"lite0": 75.1, "lite1": 76.7, "lite2": 77.6, "lite3": 79.8, "lite4": 81.5})),
    WeightFamily("imagenet21k", "ImageNet-21k pretraining (21,843 classes); inputs scaled to [-1, 1]",
                 "google/automl",
                 _v2("-21k", dict.fromkeys(("b0", "b1", "b2", "b3", "s", "m", "l", "xl"))),
                 num_classes=IMAGENET21K_CLASSES, normalization=configs.PREPROCESS_SYMMETRIC),
    WeightFamily("imagenet21k-ft1k", "ImageNet-21k pretraining, fine-tuned on ImageNet-1k; inputs scaled to [-1, 1]",
                 "google/automl",
                 _v2("-21k-ft1k", {"b0": None, "b1": None, "b2": None, "b3": None, "s": 84.9, "m": 86.2,
                                   "l": 86.9, "xl": 87.2}),
                 normalization=configs.PREPROCESS_SYMMETRIC),
)}


def list_weights(name: str | ModelConfig) -> list[str]:
    """The pretrained weights `build_model(name, weights=...)` accepts for a registered variant:
    'imagenet' where keras.applications publishes a file, then the official checkpoint families."""
    config = configs.get_config(name)
    found = ["imagenet"] if config.keras_weights else []
    return found + [f.name for f in FAMILIES.values() if config.name in f.variants]


def family_for(config: ModelConfig, weights: str) -> WeightFamily | None:
    """The family `weights` names for `config`; None for None, 'imagenet' and file paths.

    Raises ValueError (listing what exists) for a family name that has no checkpoint for `config`.
    """
    if not isinstance(weights, str) or weights not in FAMILIES:
        return None
    family = FAMILIES[weights]
    if config.name not in family.variants:
        raise ValueError(f"no {weights!r} weights are published for {config.name}; "
                         f"weights for it: {', '.join(list_weights(config)) or 'none'}; "
                         f"{weights!r} exists for {', '.join(family.variants)}")
    return family


def resolve_weights(name: str | ModelConfig, weights) -> tuple[ModelConfig, WeightFamily | None]:
    """(the config to build, the family) for pretrained `weights` of `name`: the family's input
    normalization and resolution applied; (the config, None) for None, 'imagenet' and files."""
    config = configs.get_config(name)
    family = family_for(config, weights)
    return family_config(config, family), family


def default_num_classes(family: WeightFamily | None) -> int:
    """The head a model built for `family` gets unless told otherwise (ImageNet-1k without one)."""
    return family.num_classes if family else IMAGENET_CLASSES


def family_config(config: ModelConfig, family: WeightFamily | None) -> ModelConfig:
    """`config` with the input normalization and resolution the family was trained with.

    AdvProp keeps V1's normalization layer (its mean/std weights are set by the conversion); a
    family that needs another kind of normalization layer (V2-B0..B3 from ImageNet-21k) gets it here.
    """
    if family is None:
        return config
    changes = {}
    if family.normalization and family.normalization != NORMALIZE_INCEPTION:
        changes["preprocessing"] = family.normalization
    if family.resolution:
        changes["resolution"] = family.resolution
    return dataclasses.replace(config, **changes) if changes else config


# ---------------------------------------------------------------------------------------------
# Checkpoint variable names, as the reference code creates them.

def _block_scopes(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Weighted block layers grouped by block prefix ('block2a_'), in block order."""
    blocks: dict[str, list] = {}
    for layer in model.layers:
        match = re.match(r"(block\d+[a-z]+_)", layer.name)
        if match and layer.weights:
            blocks.setdefault(match.group(1), []).append(layer)
    return blocks


def reference_names(model: keras.Model, scope: str) -> list[tuple[keras.Variable, str]]:
    """[(variable, checkpoint name)] for every weight the checkpoint holds.

    Inside a block the reference numbers its layers per kind in creation order: the 1x1 expansion
    (or V2's fused kxk expansion) is `conv2d` and the projection `conv2d_1` (just `conv2d` without
    an expansion); batch norms count the same way; SE's convs are `se/conv2d` and `se/conv2d_1`.
    """
    fixed = {"stem_conv": "stem/conv2d", "stem_bn": "stem/tpu_batch_normalization",
             "top_conv": "head/conv2d", "top_bn": "head/tpu_batch_normalization", "predictions": "head/dense"}
    layer_scopes = {name: f"{scope}/{path}" for name, path in fixed.items()}
    for index, (prefix, block_layers) in enumerate(_block_scopes(model).items()):
        convs = [p for p in ("expand_conv", "project_conv") if any(l.name == prefix + p for l in block_layers)]
        norms = [p for p in ("expand_bn", "bn", "project_bn") if any(l.name == prefix + p for l in block_layers)]
        kinds = {**{p: "conv2d" + (f"_{i}" if i else "") for i, p in enumerate(convs)},
                 **{p: "tpu_batch_normalization" + (f"_{i}" if i else "") for i, p in enumerate(norms)},
                 "dwconv": "depthwise_conv2d", "dwconv2": "depthwise_conv2d",
                 "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1"}
        for layer in block_layers:
            suffix = layer.name[len(prefix):]
            if suffix not in kinds:
                raise ValueError(f"layer {layer.name!r} has no counterpart in the reference checkpoints")
            layer_scopes[layer.name] = f"{scope}/blocks_{index}/{kinds[suffix]}"
    names = []
    for layer in model.layers:
        if not layer.weights or layer.name == "normalization":
            continue
        if layer.name not in layer_scopes:
            raise ValueError(f"layer {layer.name!r} has no counterpart in the reference checkpoints")
        for variable in layer.weights:
            leaf = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else variable.name
            names.append((variable, f"{layer_scopes[layer.name]}/{leaf}"))
    return names


def _normalization_values(model: keras.Model, family: WeightFamily) -> list[tuple[keras.Variable, np.ndarray]]:
    """V1's StdNormalization weights (not in any checkpoint) for the family's input scaling."""
    try:
        layer = model.get_layer("normalization")
    except ValueError:
        return []
    if family.normalization == NORMALIZE_INCEPTION:
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # (x/255 - 0.5) / 0.5 == x * 2 / 255 - 1
    else:
        mean, std = layer.initial_mean, layer.initial_std
    return [(layer.mean, np.asarray(mean)), (layer.variance, np.asarray(std)), (layer.count, np.asarray(0))]


def convert_checkpoint(model: keras.Model, checkpoint: str, family: WeightFamily, scope: str | None = None) -> None:
    """Set every weight of `model` from a reference TF checkpoint (a prefix such as
    `.../model.ckpt`), reading each variable's EMA shadow where the checkpoint has one.

    Every model weight must be found, with its shape, and every checkpoint variable must be used
    exactly once (the raw twin of a used EMA shadow, the step and optimizer slots excepted);
    anything else is a ValueError naming the variable, and the model is left untouched.
    """
    import tensorflow as tf

    scope = scope or model.name
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    if not any(name.startswith(scope + "/") for name in shapes):
        scopes = sorted({name.split("/")[0] for name in shapes if "/" in name})
        raise ValueError(f"checkpoint {checkpoint} has no variables under {scope!r} (it has {', '.join(scopes)}): "
                         "is it for another variant?")
    assignments, used = [], set()
    for variable, name in reference_names(model, scope):
        source = name + EMA_SUFFIX if name + EMA_SUFFIX in shapes else name
        if source not in shapes:
            raise ValueError(f"checkpoint {checkpoint} has no variable {name!r} for weight {variable.path!r}")
        if tuple(shapes[source]) != tuple(variable.shape):
            raise ValueError(f"checkpoint variable {source!r} has shape {tuple(shapes[source])}, but weight "
                             f"{variable.path!r} expects {tuple(variable.shape)}: is it for another variant or "
                             "class count?")
        if source in used:
            raise ValueError(f"checkpoint variable {source!r} would be used twice")
        used.add(source)
        assignments.append((variable, reader.get_tensor(source)))
    leftovers = [name for name in shapes if name not in used and not _TRAINING_STATE.search(name)
                 and not (name + EMA_SUFFIX in used)]
    if leftovers:
        raise ValueError(f"checkpoint {checkpoint} has {len(leftovers)} variable(s) this model has no place for, "
                         f"e.g. {sorted(leftovers)[0]!r}: is it for another variant?")
    assignments += _normalization_values(model, family)
    set_once = {id(v) for v, _ in assignments}
    missing = [v.path for v in model.weights if id(v) not in set_once]
    if missing or len(set_once) != len(assignments):
        raise ValueError(f"weights not set exactly once by {checkpoint}: {missing[:3]}")
    for variable, value in assignments:
        variable.assign(np.asarray(value).astype(variable.dtype))


# ---------------------------------------------------------------------------------------------
# Download, unpack, convert once.

def _cache_dir() -> str:
    from efficientnet_tf.models.downloads import keras_models_dir

    return keras_models_dir("efficientnet_tf")


def _archive_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _find_checkpoint(directory: str) -> str:
    """The checkpoint prefix in an unpacked archive (the `checkpoint` file's, or the only `.index`)."""
    import tensorflow as tf

    latest = None
    for root, _, files in os.walk(directory):
        if "checkpoint" in files:
            latest = tf.train.latest_checkpoint(root)
        if latest:
            return latest
    indexes = sorted(os.path.join(root, f[:-len(".index")]) for root, _, files in os.walk(directory)
                     for f in files if f.endswith(".index"))
    if len(indexes) != 1:
        raise ValueError(f"expected one TF checkpoint in {directory}, found {len(indexes)}: {indexes[:3]}")
    return indexes[0]


def _download(family: WeightFamily, variant: str) -> str:
    from efficientnet_tf.models.downloads import download

    url = family.url(variant)
    return download(_archive_name(url), url, f"the {family.name!r} checkpoint of {variant}", subdir="efficientnet_tf")


def official_weights_file(config: ModelConfig, family: WeightFamily) -> str:
    """The cached Keras weights of `family` for `config` (full model, the family's head),
    converting the downloaded checkpoint archive the first time."""
    from efficientnet_tf.files import move_into_place
    from efficientnet_tf.models.builder import build_efficientnet

    cached = os.path.join(_cache_dir(), f"{config.name}-{family.name}.weights.h5")
    if os.path.exists(cached):
        return cached
    archive = _download(family, config.name)
    os.makedirs(_cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as unpacked:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
        except (tarfile.TarError, OSError) as err:
            reason = str(err).splitlines()[0].rstrip(":")  # tarfile lists every method it tried, one per line
            raise ValueError(f"{archive} is not a readable checkpoint archive ({reason}); delete it and try again "
                             f"(it is downloaded from {family.url(config.name)})") from None
        checkpoint = _find_checkpoint(unpacked)
        model = build_efficientnet(family_config(config, family), num_classes=family.num_classes,
                                   input_shape=(None, None, 3), classifier_activation=None)
        convert_checkpoint(model, checkpoint, family, scope=config.name)
        # Written aside and renamed: an interrupted conversion never leaves a truncated cache file.
        partial = os.path.join(unpacked, "converted.weights.h5")
        model.save_weights(partial)
        move_into_place(partial, cached)
    log.info("converted %s to %s", archive, cached)
    return cached
