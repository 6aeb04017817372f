"""The split rules every source shares: which examples are held out for evaluation, and shard ranges."""

from __future__ import annotations

import numpy as np

# Held out of the training images when a dataset has no split of its own for evaluation.
DEFAULT_VALIDATION_FRACTION = 0.1


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def _stratified_split(items, fraction, seed):
    """Per class: a seeded `fraction` (at least 1, at most all but 1) held out; one-image classes train only."""
    rng = np.random.default_rng(seed)
    train, evaluation = [], []
    labels = sorted({label for _, label in items})
    for label in labels:
        members = [it for it in items if it[1] == label]
        order = rng.permutation(len(members))
        n_eval = _held_out_count(len(members), fraction)
        evaluation += [members[i] for i in sorted(order[:n_eval])]
        train += [members[i] for i in sorted(order[n_eval:])]
    return train, evaluation


def _held_out_count(count: int, fraction: float) -> int:
    return min(max(1, int(round(count * fraction))), count - 1)


def held_out_mask(count: int, fraction: float, seed: int, name: str = "the dataset") -> np.ndarray:
    """bool [count]: a seeded round(count * fraction) (at least 1) of the positions, for evaluation."""
    if count < 2:
        raise ValueError(f"{name} has {count} training example(s): too few to hold some out for evaluation")
    held = np.zeros(count, bool)
    n_eval = min(max(1, int(round(count * fraction))), count - 1)
    held[np.random.default_rng(seed).permutation(count)[:n_eval]] = True
    return held


def _shard_range(size: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, end) of shard `index` of `count` contiguous, near-equal ranges of `size` examples."""
    count, index = shard
    return size * index // count, size * (index + 1) // count
