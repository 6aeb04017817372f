"""Face-recognition style metrics of embeddings: verification (pairs) and retrieval (1-NN).

The protocol, for L2-normalisable embeddings of the evaluation images of *held-out* identities
(identities never seen in training, so the numbers measure how well the embedding generalises):

* **Pairs.** Every positive pair (two images of the same identity, i < j) is used; negative pairs
  (different identities, i < j) are a seeded uniform sample without replacement of
  `negative_pairs` of them (all of them when there are fewer). The sample is deterministic for a
  seed, so epochs of one run (and runs with the same evaluation set) are compared on the same pairs.
* **Score.** The cosine similarity of the two embeddings; a pair is *accepted* (called "same
  identity") when its score is >= a threshold t.
* **ROC.** TAR(t) (true accept rate) is the share of positive pairs accepted, FAR(t) (false accept
  rate) the share of negative pairs accepted. `roc_auc` is the area under that curve, with ties
  between a positive and a negative score counting 1/2.
* **TAR@FAR=f** is the highest TAR of a threshold whose FAR is <= f. With N negative pairs FAR
  moves in steps of 1/N, so FAR below 1/N cannot be measured: when f < 1/N the strictest threshold
  that admits no negative is used, i.e. TAR is the share of positives scoring strictly above the
  largest negative score. (With the default 100,000 negatives, FAR=1e-3 rests on 100 negatives.)
* **Best accuracy** is (accepted positives + rejected negatives) / all pairs at the threshold that
  maximises it; note the pair set is dominated by negatives, so this accuracy is too.
* **Retrieval top-1** is leave-one-out 1-nearest-neighbour accuracy by cosine similarity: every
  image whose identity has at least 2 images is a query against all *other* images; singletons
  are not queries (their identity has no other image to find) but stay in the gallery as
  distractors. Numpy only, so export can score quantized models without TensorFlow.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

VERIFICATION_KEYS = ("retrieval_top1", "roc_auc", "tar_at_far_1e-3", "tar_at_far_1e-2", "best_accuracy",
                     "best_threshold")
DEFAULT_NEGATIVE_PAIRS = 100_000

_RETRIEVAL_ROWS = 1024  # query rows per similarity block: 1024 x 50k float32 is 200 MB, not 10 GB
_SCORE_PAIRS = 8192  # pairs per block in cosine_scores (two gathered [block, dim] arrays)
_MAX_DRAW = 1 << 22  # candidate pairs drawn per sampling round, bounds its memory


def sample_pairs(labels, negative_pairs: int = DEFAULT_NEGATIVE_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All positive pairs and a seeded uniform sample of negative pairs of images, by identity.

    Args:
      labels: 1-D identity of each image (ints, or anything numpy can compare).
      negative_pairs: how many distinct negative pairs to sample (all of them when fewer exist).
      seed: the sample's seed; the same labels, count and seed give the same pairs.

    Returns:
      (positive, negative): int64 arrays of shape [P, 2] and [N, 2] of image indices, i < j in
      each row, rows sorted. Positive rows have equal labels, negative rows different ones.
    """
    labels = _labels_1d(labels)
    if isinstance(negative_pairs, bool) or not isinstance(negative_pairs, numbers.Integral) or negative_pairs < 1:
        raise ValueError(f"negative_pairs must be an integer >= 1, got {negative_pairs!r}")
    identity, counts = _identity_index(labels)
    positive = _positive_pairs(identity, counts)
    n = len(labels)
    all_negatives = n * (n - 1) // 2 - len(positive)
    wanted = min(int(negative_pairs), all_negatives)
    rng = np.random.default_rng(seed)
    if 2 * wanted >= all_negatives:
        # Most of them are wanted: rejection sampling would mostly draw duplicates, so list them all.
        negative = _all_negative_pairs(identity)
        if wanted < all_negatives:
            negative = negative[np.sort(rng.choice(all_negatives, size=wanted, replace=False))]
    else:
        negative = _sampled_negative_pairs(identity, wanted, all_negatives / (n * (n - 1) / 2), rng)
    return positive, negative


def _labels_1d(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one identity per image), got shape {labels.shape}")
    return labels


def _identity_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's identity as 0..K-1 and the image count of each identity, checking that there
    are at least 2 identities and at least one positive pair."""
    names, identity, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(names) < 2:
        raise ValueError(f"labels hold {len(names)} identit{'y' if len(names) == 1 else 'ies'} "
                         f"({len(labels)} images); verification needs at least 2")
    _require_positive(counts)
    return identity.reshape(-1).astype(np.int64), counts


def _require_positive(counts: np.ndarray) -> None:
    if not (counts >= 2).any():
        raise ValueError(f"no positive pair: every identity has a single image ({len(counts)} identities)")


def _positive_pairs(identity: np.ndarray, counts: np.ndarray) -> np.ndarray:
    order = np.argsort(identity, kind="stable")  # images grouped by identity, increasing index inside
    starts = np.concatenate([[0], np.cumsum(counts)])
    blocks = []
    for k in np.flatnonzero(counts >= 2):
        members = order[starts[k]:starts[k + 1]]
        first, second = np.triu_indices(len(members), 1)
        blocks.append(np.stack([members[first], members[second]], axis=1))
    return _sorted_rows(np.concatenate(blocks).astype(np.int64))


def _all_negative_pairs(identity: np.ndarray) -> np.ndarray:
    n = len(identity)
    blocks = []
    for start in range(0, n, _RETRIEVAL_ROWS):  # row blocks: never an n x n mask
        rows = np.arange(start, min(start + _RETRIEVAL_ROWS, n))
        mask = (identity[rows, None] != identity[None, :]) & (np.arange(n)[None, :] > rows[:, None])
        first, second = np.nonzero(mask)
        blocks.append(np.stack([rows[first], second], axis=1))
    return np.concatenate(blocks).astype(np.int64)  # already sorted: row-major within increasing rows


def _sampled_negative_pairs(identity: np.ndarray, wanted: int, negative_share: float,
                            rng: np.random.Generator) -> np.ndarray:
    """`wanted` distinct negative pairs, uniformly: draw unordered pairs uniformly, drop positives,
    keep each pair's first draw; the first `wanted` distinct ones are a uniform sample."""
    n = len(identity)
    keys = np.empty(0, np.int64)  # i * n + j, i < j, in order of first draw
    while len(keys) < wanted:
        draw = int(min(_MAX_DRAW, max(1024, 1.2 * (wanted - len(keys)) / negative_share)))
        first = rng.integers(0, n, size=draw)
        second = rng.integers(0, n - 1, size=draw)
        second += second >= first  # uniform over ordered pairs with i != j
        low, high = np.minimum(first, second), np.maximum(first, second)
        negative = identity[low] != identity[high]
        keys = np.concatenate([keys, low[negative] * n + high[negative]])
        _, first_draw = np.unique(keys, return_index=True)
        keys = keys[np.sort(first_draw)]
    keys = np.sort(keys[:wanted])
    return np.stack([keys // n, keys % n], axis=1)


def _sorted_rows(pairs: np.ndarray) -> np.ndarray:
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


ZERO_ROWS = ("raise", "zero")


def unit_rows(embeddings, dtype=None, zero_rows: str = "raise") -> np.ndarray:
    """Rows scaled to unit L2 norm (norms computed in float64).

    Args:
      embeddings: [images, dim], at least one row.
      dtype: of the result; default: the embeddings' float type, at least float32.
      zero_rows: what a zero or non-finite row (no direction) does: "raise" a ValueError, or
        become a zero row ("zero"), which `retrieval_top1` and `nearest_neighbours` then treat as
        similar to nothing. "zero" is for measuring a quantized model whose output may collapse.
    """
    if zero_rows not in ZERO_ROWS:
        raise ValueError(f"zero_rows must be one of {', '.join(ZERO_ROWS)}, got {zero_rows!r}")
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or not len(embeddings):
        raise ValueError(f"embeddings must be 2-D [images, dim] with at least one row, got shape {embeddings.shape}")
    if dtype is None:
        dtype = np.result_type(embeddings.dtype, np.float32)
    wide = embeddings.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(wide, axis=1)
    bad = ~np.isfinite(wide).all(axis=1) | (norms == 0) | ~np.isfinite(norms)
    if bad.any() and zero_rows == "raise":
        raise ValueError(f"{int(bad.sum())} of {len(embeddings)} embedding rows are zero or non-finite "
                         f"(first: row {int(np.flatnonzero(bad)[0])}); their cosine similarity is undefined")
    wide[bad] = 0.0
    norms[bad] = 1.0
    return (wide / norms[:, None]).astype(dtype)


def cosine_scores(embeddings, pairs) -> np.ndarray:
    """Cosine similarity of each pair of rows, float64 [len(pairs)] in [-1, 1].

    Rows are L2-normalised first; a zero or non-finite row raises ValueError (it has no direction,
    and a silent NaN would poison every metric computed from the scores).
    """
    unit = unit_rows(embeddings, np.float64)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or (pairs.size and not np.issubdtype(pairs.dtype, np.integer)):
        raise ValueError(f"pairs must be an integer array of shape [pairs, 2], got {pairs.dtype} {pairs.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= len(unit)):
        raise ValueError(f"pairs index images {pairs.min()}..{pairs.max()}, but there are {len(unit)} embeddings")
    scores = np.empty(len(pairs), np.float64)
    for start in range(0, len(pairs), _SCORE_PAIRS):
        block = pairs[start:start + _SCORE_PAIRS]
        scores[start:start + len(block)] = np.einsum("ij,ij->i", unit[block[:, 0]], unit[block[:, 1]])
    return np.clip(scores, -1.0, 1.0)  # rounding can step just past +-1


def _scores(positive_scores, negative_scores) -> tuple[np.ndarray, np.ndarray]:
    checked = []
    for name, scores in (("positive_scores", positive_scores), ("negative_scores", negative_scores)):
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or not len(scores):
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError(f"{name} holds {int((~np.isfinite(scores)).sum())} non-finite values")
        checked.append(scores)
    return checked[0], checked[1]


def _accepted_at(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of the (ascending) scores are >= each threshold."""
    return len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="left")


def roc(positive_scores, negative_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve, accepting a pair when its score >= t.

    Returns:
      (far, tar, thresholds), float64 arrays, thresholds decreasing: +inf (accept nothing: the point
      (0, 0)), then every distinct score down to the lowest (accept everything: the point (1, 1)).
    """
    positive, negative = _scores(positive_scores, negative_scores)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([positive, negative]))[::-1]])
    tar = _accepted_at(np.sort(positive), thresholds) / len(positive)
    far = _accepted_at(np.sort(negative), thresholds) / len(negative)
    return far, tar, thresholds


def tar_at_far(positive_scores, negative_scores, far: float) -> float:
    """The highest TAR of a threshold whose FAR (share of negatives with score >= t) is <= `far`.

    With N negatives FAR takes the values k/N, so at most k = the largest integer with k/N <= far
    negatives may be accepted; the best threshold is then just above the (k+1)-th largest negative
    score, and TAR is the share of positives strictly above that score. When far < 1/N (k = 0) this
    is the strictest threshold that admits no negative: TAR is the share of positives strictly
    above the largest negative score. far >= 1 accepts everything (TAR 1).
    """
    positive, negative = _scores(positive_scores, negative_scores)
    far = float(far)
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far!r}")
    count = len(negative)
    allowed = int(np.floor(far * count))
    # k/N <= far compared as the definition reads, in floats, whatever far * N rounded to.
    while allowed < count and (allowed + 1) / count <= far:
        allowed += 1
    while allowed > 0 and allowed / count > far:
        allowed -= 1
    if allowed >= count:
        return 1.0
    bar = np.sort(negative)[::-1][allowed]  # the (k+1)-th largest negative score: must be rejected
    return float((positive > bar).mean())


def roc_auc(positive_scores, negative_scores) -> float:
    """Area under the ROC curve: P(positive score > negative score) + 1/2 P(equal), computed by
    the Mann-Whitney U statistic from average ranks."""
    positive, negative = _scores(positive_scores, negative_scores)
    values, inverse, counts = np.unique(np.concatenate([positive, negative]), return_inverse=True,
                                        return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of each distinct value's last copy
    average_rank = ends - (counts - 1) / 2.0  # tied values share their ranks' mean
    rank_sum = average_rank[inverse.reshape(-1)[:len(positive)]].sum()
    p, n = len(positive), len(negative)
    return float((rank_sum - p * (p + 1) / 2.0) / (p * n))


def best_threshold_accuracy(positive_scores, negative_scores) -> tuple[float, float]:
    """The threshold t maximising (positives with score >= t + negatives with score < t) / all
    pairs, and that accuracy, as (accuracy, threshold).

    t is one of the scores (accept >= t), or the smallest float above the highest score when
    rejecting every pair is best, so it is always finite. Ties go to the highest threshold.
    """
    positive, negative = _scores(positive_scores, negative_scores)
    far, tar, thresholds = roc(positive, negative)
    correct = tar * len(positive) + (1.0 - far) * len(negative)
    best = int(np.argmax(correct))
    threshold = thresholds[best]
    if not np.isfinite(threshold):
        threshold = np.nextafter(thresholds[1], np.inf)
    return float(correct[best] / (len(positive) + len(negative))), float(threshold)


def retrieval_top1(embeddings, labels, zero_rows: str = "raise") -> float:
    """Leave-one-out 1-nearest-neighbour accuracy by cosine similarity.

    Each image whose identity has at least 2 images is a query against all other images
    (singletons are gallery distractors, not queries); it scores 1 when its most similar other
    image has its identity. Ties in similarity go to the lowest image index. Computed in blocks of
    query rows, in the embeddings' precision (float32 stays float32), so 50k images never need a
    50k x 50k matrix. `zero_rows` as in `unit_rows`: with "zero", a zero row is a miss as a query
    and never found as a neighbour.
    """
    return float(np.mean(retrieval_hits(embeddings, labels, zero_rows)))


def retrieval_hits(embeddings, labels, zero_rows: str = "raise") -> np.ndarray:
    """`retrieval_top1` image by image: for each query (each image whose identity has at least 2
    images, in image order), whether its nearest other image has its identity. Two embeddings of
    the same images (a model and its quantized export) compare query by query."""
    labels = _labels_1d(labels)
    unit = unit_rows(embeddings, zero_rows=zero_rows)
    if len(unit) != len(labels):
        raise ValueError(f"{len(unit)} embeddings but {len(labels)} labels")
    _, identity, counts = np.unique(labels, return_inverse=True, return_counts=True)
    identity = identity.reshape(-1)
    _require_positive(counts)
    queries = np.flatnonzero(counts[identity] >= 2)
    nearest = _nearest_others(unit, queries)
    return (nearest >= 0) & (identity[np.maximum(nearest, 0)] == identity[queries])


def paired_change_p_value(lost: int, gained: int) -> float:
    """Two-sided exact sign test (McNemar's, exact) of a paired change: `lost` queries that one
    model gets right and the other wrong, `gained` the reverse. The chance of a split at least as
    lopsided if each changed query were as likely to be lost as gained; 1.0 when none changed.
    A small value says the change is the model's, not a few near-ties falling either way."""
    if lost < 0 or gained < 0:
        raise ValueError(f"lost and gained are counts, got {lost} and {gained}")
    changed = lost + gained
    tail = sum(math.comb(changed, k) for k in range(min(lost, gained) + 1)) / 2 ** changed
    return min(1.0, 2 * tail)


def nearest_neighbours(embeddings, zero_rows: str = "raise") -> np.ndarray:
    """For every image, the index of its most similar *other* image by cosine similarity (ties:
    the lowest index); in blocks, like `retrieval_top1`. With zero_rows="zero" (see `unit_rows`),
    a zero row has no neighbour (-1) and is nobody's neighbour."""
    unit = unit_rows(embeddings, zero_rows=zero_rows)
    return _nearest_others(unit, np.arange(len(unit)))


def _nearest_others(unit: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query row's most similar other row of `unit`; -1 where there is none (a zero
    row, or every other row is zero)."""
    nearest = np.empty(len(queries), np.int64)
    empty = ~unit.any(axis=1)
    for start in range(0, len(queries), _RETRIEVAL_ROWS):
        rows = queries[start:start + _RETRIEVAL_ROWS]
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # leave the query itself out
        similarity[:, empty] = -np.inf  # a zero row is similar to nothing
        best = np.argmax(similarity, axis=1)  # first maximum: lowest index
        best[empty[rows] | np.isneginf(similarity[np.arange(len(rows)), best])] = -1
        nearest[start:start + len(rows)] = best
    return nearest


def evaluate_embeddings(embeddings, labels, negative_pairs: int = DEFAULT_NEGATIVE_PAIRS,
                        seed: int = 0) -> tuple[dict, dict]:
    """Both `verification_report` and `verification_curves` from one pair sample: (report, curves)."""
    labels = _labels_1d(labels)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings must be [images, dim] with one row per label ({len(labels)} labels), "
                         f"got shape {embeddings.shape}")
    positive_index, negative_index = sample_pairs(labels, negative_pairs, seed)
    positive = cosine_scores(embeddings, positive_index)
    negative = cosine_scores(embeddings, negative_index)
    far, tar, _ = roc(positive, negative)
    accuracy, threshold = best_threshold_accuracy(positive, negative)
    report = {
        "retrieval_top1": float(retrieval_top1(embeddings, labels)),
        "roc_auc": roc_auc(positive, negative),
        "tar_at_far_1e-3": tar_at_far(positive, negative, 1e-3),
        "tar_at_far_1e-2": tar_at_far(positive, negative, 1e-2),
        "best_accuracy": accuracy,
        "best_threshold": threshold,
        "positive_pairs": int(len(positive)),
        "negative_pairs": int(len(negative)),
        "identities": int(len(np.unique(labels))),
        "images": int(len(labels)),
    }
    curves = {"far": far, "tar": tar, "positive_scores": positive, "negative_scores": negative,
              "best_threshold": threshold}
    return report, curves


def verification_report(embeddings, labels, negative_pairs: int = DEFAULT_NEGATIVE_PAIRS, seed: int = 0) -> dict:
    """The VERIFICATION_KEYS (python floats) plus the counts "positive_pairs", "negative_pairs",
    "identities" and "images" (ints). See the module docstring for the protocol.

    Args:
      embeddings: [images, dim] embeddings (normalised here; zero rows raise).
      labels: [images] identity of each image; at least 2 identities, one with 2+ images.
      negative_pairs: negative pairs to sample (all when fewer exist).
      seed: seed of the negative sample.
    """
    return evaluate_embeddings(embeddings, labels, negative_pairs, seed)[0]


def verification_curves(embeddings, labels, negative_pairs: int = DEFAULT_NEGATIVE_PAIRS, seed: int = 0) -> dict:
    """What `plots.plot_roc` and `plots.plot_similarity_histograms` draw: numpy arrays "far",
    "tar" (the ROC), "positive_scores", "negative_scores" and the float "best_threshold".
    Arguments as `verification_report`; use `evaluate_embeddings` to get both from one sample."""
    return evaluate_embeddings(embeddings, labels, negative_pairs, seed)[1]
