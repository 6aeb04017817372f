"""Model registry: every variant is one frozen ModelConfig entry.

Figures come from the EfficientNet papers, tensorflow/tpu (V1, Lite), google/automl (V2)
and keras.applications (layer naming and preprocessing).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

from efficientnet_tf.models.block_args import BlockSpec, decode_blocks, encode_block

V1_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
# Lite drops squeeze-excite (it hurts int8 quantization and mobile accelerators).
LITE_BLOCKS = tuple(s.replace("_se0.25", "") for s in V1_BLOCKS)

V2_BASE_BLOCKS = (
    "r1_k3_s1_e1_i32_o16_c1",
    "r2_k3_s2_e4_i16_o32_c1",
    "r2_k3_s2_e4_i32_o48_c1",
    "r3_k3_s2_e4_i48_o96_se0.25",
    "r5_k3_s1_e6_i96_o112_se0.25",
    "r8_k3_s2_e6_i112_o192_se0.25",
)
V2_S_BLOCKS = (
    "r2_k3_s1_e1_i24_o24_c1",
    "r4_k3_s2_e4_i24_o48_c1",
    "r4_k3_s2_e4_i48_o64_c1",
    "r6_k3_s2_e4_i64_o128_se0.25",
    "r9_k3_s1_e6_i128_o160_se0.25",
    "r15_k3_s2_e6_i160_o256_se0.25",
)
V2_M_BLOCKS = (
    "r3_k3_s1_e1_i24_o24_c1",
    "r5_k3_s2_e4_i24_o48_c1",
    "r5_k3_s2_e4_i48_o80_c1",
    "r7_k3_s2_e4_i80_o160_se0.25",
    "r14_k3_s1_e6_i160_o176_se0.25",
    "r18_k3_s2_e6_i176_o304_se0.25",
    "r5_k3_s1_e6_i304_o512_se0.25",
)
V2_L_BLOCKS = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r7_k3_s2_e4_i32_o64_c1",
    "r7_k3_s2_e4_i64_o96_c1",
    "r10_k3_s2_e4_i96_o192_se0.25",
    "r19_k3_s1_e6_i192_o224_se0.25",
    "r25_k3_s2_e6_i224_o384_se0.25",
    "r7_k3_s1_e6_i384_o640_se0.25",
)
V2_XL_BLOCKS = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r8_k3_s2_e4_i32_o64_c1",
    "r8_k3_s2_e4_i64_o96_c1",
    "r16_k3_s2_e4_i96_o192_se0.25",
    "r24_k3_s1_e6_i192_o256_se0.25",
    "r32_k3_s2_e6_i256_o512_se0.25",
    "r8_k3_s1_e6_i512_o640_se0.25",
)

# How raw 0..255 RGB pixels are normalized inside the model.
PREPROCESS_IMAGENET_STD = "imagenet_std"  # V1: (x/255 - mean) / std, mean/std stored as weights
PREPROCESS_IMAGENET_CONST = "imagenet_const"  # V2 B0-B3: same formula, constants
PREPROCESS_SYMMETRIC = "symmetric"  # V2 S/M/L/XL: x/128 - 1
PREPROCESS_LITE = "lite"  # Lite: (x - 127) / 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one EfficientNet variant."""

    name: str
    family: str  # "v1" | "v2" | "lite"
    block_strings: tuple[str, ...]
    width_coefficient: float
    depth_coefficient: float
    resolution: int  # evaluation / default input size
    dropout_rate: float
    drop_connect_rate: float = 0.2
    activation: str = "swish"
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    stem_filters: int = 32
    head_filters: int = 1280
    # Lite: stem, head and the first/last stage's repeats stay unscaled (tensorflow/tpu).
    fix_head_stem: bool = False
    # V1 rounding bumps a width rounded >10% down by one divisor; keras.applications'
    # (and automl's) V2 code omits that guard, and its weight files depend on it (V2-B3).
    round_filters_guard: bool = True
    preprocessing: str = PREPROCESS_IMAGENET_STD
    train_resolution: int | None = None  # V2 trains smaller than it evaluates
    keras_weights: str | None = None  # keras.applications weight-file stem, if published

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        return decode_blocks(self.block_strings)

    @property
    def keras_style_padding(self) -> bool:
        """V1/Lite pad explicitly before strided convs (TF 'SAME' differs on even sizes)."""
        return self.family in ("v1", "lite")


def _v1(name, width, depth, res, dropout, weights=True):
    stem = name.split("-")[-1]
    return ModelConfig(
        name=name,
        family="v1",
        block_strings=V1_BLOCKS,
        width_coefficient=width,
        depth_coefficient=depth,
        resolution=res,
        dropout_rate=dropout,
        keras_weights=f"efficientnet{stem}" if weights else None,
    )


def _lite(name, width, depth, res, dropout):
    return ModelConfig(
        name=name,
        family="lite",
        block_strings=LITE_BLOCKS,
        width_coefficient=width,
        depth_coefficient=depth,
        resolution=res,
        dropout_rate=dropout,
        activation="relu6",
        fix_head_stem=True,
        preprocessing=PREPROCESS_LITE,
    )


def _v2(name, blocks, width, depth, train_res, res, dropout, weights=True):
    suffix = name.split("-")[-1]
    return ModelConfig(
        name=name,
        family="v2",
        block_strings=blocks,
        width_coefficient=width,
        depth_coefficient=depth,
        resolution=res,
        train_resolution=train_res,
        dropout_rate=dropout,
        bn_momentum=0.9,
        stem_filters=decode_blocks(blocks)[0].input_filters,
        round_filters_guard=False,
        preprocessing=(
            PREPROCESS_IMAGENET_CONST if suffix.startswith("b") else PREPROCESS_SYMMETRIC
        ),
        keras_weights=f"efficientnetv2-{suffix}" if weights else None,
    )


_CONFIGS = (
    _v1("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    _v1("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    _v1("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    _v1("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    _v1("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    _v1("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    _v1("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    _v1("efficientnet-b7", 2.0, 3.1, 600, 0.5),
    _v1("efficientnet-b8", 2.2, 3.6, 672, 0.5, weights=False),
    _v1("efficientnet-l2", 4.3, 5.3, 800, 0.5, weights=False),
    _v2("efficientnetv2-b0", V2_BASE_BLOCKS, 1.0, 1.0, 192, 224, 0.2),
    _v2("efficientnetv2-b1", V2_BASE_BLOCKS, 1.0, 1.1, 192, 240, 0.2),
    _v2("efficientnetv2-b2", V2_BASE_BLOCKS, 1.1, 1.2, 208, 260, 0.3),
    _v2("efficientnetv2-b3", V2_BASE_BLOCKS, 1.2, 1.4, 240, 300, 0.3),
    _v2("efficientnetv2-s", V2_S_BLOCKS, 1.0, 1.0, 300, 384, 0.2),
    _v2("efficientnetv2-m", V2_M_BLOCKS, 1.0, 1.0, 384, 480, 0.3),
    _v2("efficientnetv2-l", V2_L_BLOCKS, 1.0, 1.0, 384, 480, 0.4),
    _v2("efficientnetv2-xl", V2_XL_BLOCKS, 1.0, 1.0, 384, 512, 0.4, weights=False),
    _lite("efficientnet-lite0", 1.0, 1.0, 224, 0.2),
    _lite("efficientnet-lite1", 1.0, 1.1, 240, 0.2),
    _lite("efficientnet-lite2", 1.1, 1.2, 260, 0.3),
    _lite("efficientnet-lite3", 1.2, 1.4, 280, 0.3),
    _lite("efficientnet-lite4", 1.4, 1.8, 300, 0.3),
)
REGISTRY: dict[str, ModelConfig] = {c.name: c for c in _CONFIGS}


def list_models(family: str | None = None) -> list[str]:
    """Every registered model name, optionally only one family ('v1', 'v2', 'lite')."""
    return [n for n, c in REGISTRY.items() if family is None or c.family == family]


def get_config(name: str) -> ModelConfig:
    """The config for `name`; ValueError with the closest valid names otherwise."""
    if isinstance(name, ModelConfig):
        return name
    key = str(name).strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown model {name!r}: {hint}valid models are {', '.join(REGISTRY)}"
    )


def custom_config(
    block_strings: Sequence[str] | str,
    width_coefficient: float = 1.0,
    depth_coefficient: float = 1.0,
    resolution: int = 224,
    base: str = "efficientnet-b0",
    name: str = "efficientnet-custom",
    **overrides,
) -> ModelConfig:
    """A ModelConfig for your own block strings, inheriting everything else from `base`."""
    specs = decode_blocks(block_strings)  # validates
    return dataclasses.replace(
        get_config(base),
        name=name,
        block_strings=tuple(encode_block(s) for s in specs),
        width_coefficient=width_coefficient,
        depth_coefficient=depth_coefficient,
        resolution=resolution,
        keras_weights=None,
        **overrides,
    )
