"""Block-args strings: the declarative description of one EfficientNet stage.

Grammar (Google's tensorflow/tpu for V1, google/automl for V2): tokens joined by ``_``;
each token is a key immediately followed by its value.

==========  =====================================================  =============
key         meaning                                                example
==========  =====================================================  =============
``r``       repeats of the block in the stage (>= 1)                ``r2``
``k``       depthwise (or fused) kernel size (>= 1)                 ``k5``
``s``       strides: two digits (V1, ``s22``) or one (V2, ``s2``)   ``s11``/``s1``
``e``       expand ratio (>= 1; may be fractional)                  ``e6``
``i``       input filters before width scaling (>= 1)              ``i32``
``o``       output filters before width scaling (>= 1)             ``o16``
``se``      squeeze-excite ratio in (0, 1], relative to ``i``       ``se0.25``
``c``       conv type: ``c1`` Fused-MBConv, ``c0`` MBConv           ``c1``
``noskip``  no identity skip connection (takes no value)           ``noskip``
==========  =====================================================  =============

``r``, ``k``, ``s``, ``e``, ``i`` and ``o`` are required; each key may appear once.
``encode_block(decode_block(s)) == s`` for strings in the canonical key order above.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

_REQUIRED_KEYS = ("r", "k", "s", "e", "i", "o")
_VALID_KEYS = _REQUIRED_KEYS + ("se", "c", "noskip")
_TOKEN = re.compile(r"^([a-z]+)(.*)$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One stage of blocks, before width/depth scaling."""

    repeats: int
    kernel_size: int
    strides: tuple[int, int]
    expand_ratio: float
    input_filters: int
    output_filters: int
    se_ratio: float | None = None
    fused: bool = False
    id_skip: bool = True
    # How the string spelled strides ("s11" vs "s1"); lets encode() give back the same string.
    stride_digits: int = dataclasses.field(default=2, compare=False)
    # Only "c0" in the source string, which is the default; kept so the string round-trips.
    explicit_conv_type: bool = dataclasses.field(default=False, compare=False)

    @property
    def stride(self) -> int:
        return self.strides[0]

    @property
    def has_se(self) -> bool:
        return self.se_ratio is not None and 0 < self.se_ratio <= 1


def _fail(token: str, block_string: str, why: str) -> ValueError:
    return ValueError(
        f"invalid token {token!r} in block string {block_string!r}: {why}. "
        f"Valid keys: {', '.join(_VALID_KEYS)} (e.g. 'r1_k3_s11_e1_i32_o16_se0.25')"
    )


def _number(token: str, value: str, block_string: str, integer: bool):
    if value.startswith("-"):
        raise _fail(token, block_string, "negative values are not allowed")
    if not _NUMBER.match(value):
        raise _fail(token, block_string, f"value {value!r} is not a number")
    if integer:
        if "." in value:
            raise _fail(token, block_string, f"value {value!r} must be a whole number")
        number = int(value)
    else:
        number = float(value)
        if number.is_integer():
            number = int(number)
    if number <= 0:
        raise _fail(token, block_string, "value must be greater than 0")
    return number


def decode_block(block_string: str) -> BlockSpec:
    """Parse one block-args string into a BlockSpec (ValueError names the bad token)."""
    if not isinstance(block_string, str) or not block_string.strip():
        raise ValueError(
            f"empty block string {block_string!r}: expected tokens such as "
            "'r1_k3_s11_e1_i32_o16_se0.25'"
        )
    values: dict[str, object] = {}
    for token in block_string.split("_"):
        if token == "noskip":
            key, raw = "noskip", ""
        else:
            match = _TOKEN.match(token)
            if not match:
                raise _fail(token, block_string, "a token must start with a key")
            key, raw = match.groups()
            if key not in _VALID_KEYS or key == "noskip":
                raise _fail(token, block_string, f"unknown key {key!r}")
        if key in values:
            raise _fail(token, block_string, f"key {key!r} appears twice")
        if key == "noskip":
            values[key] = True
        elif key == "s":
            if not re.fullmatch(r"[1-9]{1,2}", raw):
                raise _fail(token, block_string, "strides must be one or two digits 1-9")
            digits = tuple(int(d) for d in raw)
            values[key] = (digits * 2 if len(digits) == 1 else digits, len(raw))
        elif key == "c":
            if raw not in ("0", "1"):
                raise _fail(token, block_string, "conv type must be c0 (MBConv) or c1 (Fused)")
            values[key] = raw == "1"
        elif key == "se":
            ratio = _number(token, raw, block_string, integer=False)
            if ratio > 1:
                raise _fail(token, block_string, "se ratio must be in (0, 1]")
            values[key] = ratio
        else:
            values[key] = _number(token, raw, block_string, integer=key != "e")
    missing = [k for k in _REQUIRED_KEYS if k not in values]
    if missing:
        raise ValueError(
            f"block string {block_string!r} lacks required key(s) {', '.join(missing)}; "
            f"every block needs {', '.join(_REQUIRED_KEYS)} (e.g. 'r1_k3_s11_e1_i32_o16_se0.25')"
        )
    strides, stride_digits = values["s"]
    return BlockSpec(
        repeats=values["r"],
        kernel_size=values["k"],
        strides=strides,
        expand_ratio=values["e"],
        input_filters=values["i"],
        output_filters=values["o"],
        se_ratio=values.get("se"),
        fused=values.get("c", False),
        id_skip=not values.get("noskip", False),
        stride_digits=stride_digits,
        explicit_conv_type="c" in values and not values["c"],
    )


def _fmt(number: float) -> str:
    return f"{number:g}"


def encode_block(spec: BlockSpec) -> str:
    """The canonical string for a spec (inverse of decode_block)."""
    sh, sw = spec.strides
    strides = f"{sh}" if spec.stride_digits == 1 and sh == sw else f"{sh}{sw}"
    tokens = [
        f"r{spec.repeats}",
        f"k{spec.kernel_size}",
        f"s{strides}",
        f"e{_fmt(spec.expand_ratio)}",
        f"i{spec.input_filters}",
        f"o{spec.output_filters}",
    ]
    if spec.se_ratio is not None:
        tokens.append(f"se{_fmt(spec.se_ratio)}")
    if spec.fused:
        tokens.append("c1")
    elif spec.explicit_conv_type:
        tokens.append("c0")
    if not spec.id_skip:
        tokens.append("noskip")
    return "_".join(tokens)


def decode_blocks(block_strings: Iterable[str] | str) -> tuple[BlockSpec, ...]:
    """Decode a list of strings (or one whitespace-separated string)."""
    if isinstance(block_strings, str):
        block_strings = block_strings.split()
    specs = tuple(decode_block(s) for s in block_strings)
    if not specs:
        raise ValueError("a network needs at least one block string")
    return specs


def encode_blocks(specs: Sequence[BlockSpec]) -> list[str]:
    return [encode_block(s) for s in specs]
