"""Recognition data: images split by identity, so that evaluation sees only people (or digits)
the embedding never trained on.

The training split holds every image of the training identities (labelled 0..K-1, the classes
the margin loss learns); the eval split every image of the held-out identities, labelled by
their own index in `Source.eval_class_names` (verification and retrieval need no more).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from efficientnet_tf.data import glyphs
from efficientnet_tf.data.sources import (
    Source,
    _decode_file,
    _files_under,
    _split_layout,
    _subdirs,
    digits_images,
    usable_image_files,
)

log = logging.getLogger(__name__)

IDENTITY_DATASETS = ("digits", "glyphs", "folder:PATH")
# The in-memory identity datasets' one image size (a folder's images vary in size).
NATIVE_SIZES = {"digits": 8, "glyphs": glyphs.IMAGE_SIZE}
DIGITS_HELD_OUT = ("7", "8", "9")
DEFAULT_HELD_OUT_FRACTION = 0.2
MIN_IDENTITIES = 2  # on each side: a loss needs two classes, verification a negative pair


def identity_source(name: str, held_out_fraction: float | None = None, seed: int = 0,
                    on_bad_image: str = "error") -> Source:
    """A dataset split by identity.

    Args:
        name: 'digits' (the 10 digits as identities), 'glyphs' (129 characters as identities, one
            image per font: data.glyphs) or 'folder:PATH' (one sub-folder of images per identity).
        held_out_fraction: share of the identities held out (seeded, at least 2 on each side);
            None: digits 7, 8 and 9, glyphs and folders 0.2.
        seed: picks the held-out identities.
        on_bad_image: folders: 'error' names unreadable files, 'skip' leaves them out.
    """
    if held_out_fraction is not None and not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_identities must be a share in (0, 1), got {held_out_fraction}")
    if name == "digits":
        images, labels = digits_images()
        identities = [str(i) for i in range(10)]
        members = {identity: np.flatnonzero(labels == i) for i, identity in enumerate(identities)}
        held_out = DIGITS_HELD_OUT if held_out_fraction is None else _held_out(identities, held_out_fraction, seed)
        return _split(name, identities, members, held_out, _reader(images), seed, native_size=NATIVE_SIZES[name],
                      flip_ok=False,
                      chosen="digits' default" if held_out_fraction is None else f"a seeded {held_out_fraction:.3g}, seed {seed}")
    if name == "glyphs":
        images, owners, identities = glyphs.glyph_images()
        members = {identity: np.flatnonzero(owners == i) for i, identity in enumerate(identities)}
        fraction = DEFAULT_HELD_OUT_FRACTION if held_out_fraction is None else held_out_fraction
        return _split(name, list(identities), members, _held_out(list(identities), fraction, seed), _reader(images),
                      seed, native_size=NATIVE_SIZES[name], flip_ok=False, chosen=f"a seeded {fraction:.3g}, seed {seed}")
    if name.startswith("folder:"):
        root = os.path.expanduser(name[len("folder:"):])
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset folder {root!r} does not exist (dataset {name!r})")
        if _split_layout(root)[0] is not None:
            raise ValueError(f"{root} is split into train/ and eval folders; the embedding task reads one sub-folder "
                             "per identity and holds out whole identities itself (held_out_identities)")
        (files,) = usable_image_files(root, on_bad_image, {d: _files_under(os.path.join(root, d)) for d in _subdirs(root)})
        identities = [d for d in sorted(files) if files[d]]
        paths = np.array([p for d in identities for p in files[d]])
        owner = np.repeat(np.arange(len(identities)), [len(files[d]) for d in identities])
        members = {identity: np.flatnonzero(owner == i) for i, identity in enumerate(identities)}
        fraction = DEFAULT_HELD_OUT_FRACTION if held_out_fraction is None else held_out_fraction
        if len(identities) < 2 * MIN_IDENTITIES:
            raise ValueError(f"dataset folder {root!r} has {len(identities)} identity folder(s) with images "
                             f"({', '.join(identities) or 'none'}); the embedding task needs at least "
                             f"{2 * MIN_IDENTITIES}: {MIN_IDENTITIES} to train on and {MIN_IDENTITIES} held out")

        def read(examples):
            files = tf.constant(paths, tf.string)
            return examples.map(lambda index, label: _decode_file(tf.gather(files, index), label),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        return _split(name, identities, members, _held_out(identities, fraction, seed), read, seed, native_size=None,
                      flip_ok=True, chosen=f"a seeded {fraction:.3g}, seed {seed}")
    raise ValueError(f"the embedding task reads identities from {' or '.join(IDENTITY_DATASETS)}, got {name!r}")


def _reader(images: np.ndarray):
    """(index, label) examples -> (image, label) from images held in memory."""
    def read(examples):
        pixels = tf.constant(images)
        return examples.map(lambda index, label: (tf.gather(pixels, index), label))

    return read


def _held_out(identities: list[str], fraction: float, seed: int) -> tuple[str, ...]:
    count = min(max(MIN_IDENTITIES, int(round(len(identities) * fraction))), len(identities) - MIN_IDENTITIES)
    if count < MIN_IDENTITIES:
        raise ValueError(f"{len(identities)} identities cannot be split into {MIN_IDENTITIES} or more to train on "
                         f"and {MIN_IDENTITIES} or more held out")
    chosen = np.random.default_rng(seed).choice(len(identities), count, replace=False)
    return tuple(identities[i] for i in sorted(chosen))


def _split(name, identities, members, held_out, read, seed, native_size, flip_ok, chosen) -> Source:
    train_ids = [i for i in identities if i not in held_out]
    eval_ids = [i for i in identities if i in held_out]
    singles = [i for i in eval_ids if len(members[i]) < 2]
    if len(singles) == len(eval_ids):
        raise ValueError(f"the held-out identities {', '.join(eval_ids)} have a single image each: there is no "
                         "positive pair to verify; give identities two or more images")
    if singles:
        log.warning("held-out identities with a single image (negatives and gallery only, never queries): %s",
                    ", ".join(singles))
    splits = {}
    for split, ids in (("train", train_ids), ("eval", eval_ids)):
        indices = np.concatenate([members[i] for i in ids])
        labels = np.concatenate([np.full(len(members[i]), k, np.int32) for k, i in enumerate(ids)])
        # A seeded order that mixes identities: folders list them one after the other, and any
        # prefix (the export's check images, a shuffle buffer's window) should see many of them.
        order = np.random.default_rng(seed).permutation(len(indices))
        splits[split] = (indices[order], labels[order])

    def make(split, shuffle_files, seed_, shard):
        indices, labels = splits[split]
        if shard is not None:
            indices, labels = indices[shard[1]::shard[0]], labels[shard[1]::shard[0]]
        examples = tf.data.Dataset.from_tensor_slices((indices, labels))
        if shuffle_files:  # before decoding: the whole split, not a buffer's window of it
            examples = examples.shuffle(len(indices), seed=seed_, reshuffle_each_iteration=True)
        return read(examples)

    def listing(ids):
        return ", ".join(ids) if len(ids) <= 12 else f"{', '.join(ids[:10])}, ... ({len(ids)})"

    description = (f"train: identities {listing(train_ids)}, {len(splits['train'][0]):,} images; eval: "
                   f"{len(eval_ids)} of {len(identities)} identities held out ({chosen}) {listing(eval_ids)}, "
                   f"{len(splits['eval'][0]):,} images")
    return Source(name, len(train_ids), tuple(train_ids), len(splits["train"][0]), len(splits["eval"][0]),
                  native_size=native_size, flip_ok=flip_ok, _make=make, split_description=description,
                  eval_class_names=tuple(eval_ids))
