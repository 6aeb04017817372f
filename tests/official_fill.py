"""Seeded values for the variables of an official checkpoint, derived from each variable's name.

The reference run (tools/reference_checkpoints.py) and the tests fill a checkpoint with the same
values, so the logits the reference code computed can be compared with ours without committing a
checkpoint. numpy's RandomState is used because its streams are frozen across numpy versions.
"""

from __future__ import annotations

import zlib

import numpy as np

EMA_SUFFIX = "/ExponentialMovingAverage"


def seeded_value(name: str, shape, seed: int = 0) -> np.ndarray:
    """A value of `shape` for the checkpoint variable `name`, scaled so a network stays finite."""
    shape = tuple(int(side) for side in shape)
    rng = np.random.RandomState(zlib.crc32(f"{seed}:{name}".encode()))
    leaf = name.removesuffix(EMA_SUFFIX).rsplit("/", 1)[-1]
    if leaf == "global_step":
        return np.asarray(1000, dtype=np.int64)
    if leaf in ("gamma", "moving_variance"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf == "bias" and "/se/conv2d_1/" in name:
        # Squeeze-excite gates near 1: at 0.5 each block halves the signal and the logits stop
        # depending on the image, which would leave preprocessing untested.
        return rng.uniform(2.0, 3.0, shape).astype(np.float32)
    if leaf in ("beta", "moving_mean", "bias"):
        return rng.uniform(-0.2, 0.2, shape).astype(np.float32)
    if leaf == "depthwise_kernel":
        fan_in = shape[0] * shape[1]
    elif leaf == "kernel":
        fan_in = int(np.prod(shape[:-1]))
    else:
        raise ValueError(f"no seeded value rule for checkpoint variable {name!r}")
    limit = np.sqrt(3.6 / fan_in)  # variance 1.2 / fan_in: the signal neither fades nor explodes
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def fixed_images(count: int = 2, height: int = 64, width: int = 80) -> np.ndarray:
    """Raw 0..255 RGB inputs shared by the reference run and the tests."""
    return np.random.RandomState(123).uniform(0, 255, (count, height, width, 3)).astype(np.float32)


def write_checkpoint(prefix: str, manifest: dict, seed: int = 0) -> None:
    """A TF name-based checkpoint at `prefix` holding every manifest variable, seeded by name."""
    import tensorflow as tf

    names = sorted(manifest)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[seeded_value(name, manifest[name], seed) for name in names])


def write_archive(path: str, folder: str, manifest: dict, seed: int = 0) -> None:
    """A .tar.gz laid out like the published ones: `folder/checkpoint` + `folder/model.ckpt.*`."""
    import os
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, folder))
        write_checkpoint(os.path.join(work, folder, "model.ckpt"), manifest, seed)
        with open(os.path.join(work, folder, "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "model.ckpt"\n')
        with tarfile.open(path, "w:gz") as tar:
            tar.add(os.path.join(work, folder), arcname=folder)
