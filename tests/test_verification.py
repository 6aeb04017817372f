"""Verification / retrieval metrics of embeddings, against independent references: scikit-learn
for the ROC and AUC, python loops for pair enumeration, retrieval and the best threshold, and
hand-built scores whose TAR@FAR is known exactly."""

import itertools
import struct

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from efficientnet_tf import plots
from efficientnet_tf.training import verification as v


def clustered(identities=20, per_identity=5, dim=32, spread=0.3, singletons=0, seed=0):
    """Embeddings around one random centre per identity, labels shuffled, plus singleton identities."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(identities), per_identity),
                             np.arange(identities, identities + singletons)])
    rng.shuffle(labels)
    centres = rng.normal(size=(identities + singletons, dim))
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def brute_force_pairs(labels):
    positive, negative = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        (positive if labels[i] == labels[j] else negative).append((i, j))
    return positive, negative


def brute_force_top1(embeddings, labels):
    unit = [np.asarray(e, np.float64) / np.linalg.norm(e) for e in embeddings]
    hits = queries = 0
    for q in range(len(labels)):
        if sum(1 for label in labels if label == labels[q]) < 2:
            continue  # a singleton has nothing to find
        best, best_index = -np.inf, None
        for g in range(len(labels)):
            if g != q and float(unit[q] @ unit[g]) > best:  # strict: the lowest index keeps a tie
                best, best_index = float(unit[q] @ unit[g]), g
        queries += 1
        hits += labels[best_index] == labels[q]
    return hits / queries


# ---- pairs -------------------------------------------------------------------------------------

def test_sample_pairs_lists_every_pair_when_fewer_negatives_than_asked():
    labels = np.array([3, 1, 3, 7, 1, 3, 9, 7, 5, 3, 1, 2])  # identities of 1..4 images
    positive, negative = v.sample_pairs(labels, negative_pairs=10_000)
    expected_positive, expected_negative = brute_force_pairs(labels)
    assert positive.dtype == np.int64 and negative.dtype == np.int64
    assert positive.tolist() == [list(p) for p in expected_positive]  # all, sorted, i < j
    assert negative.tolist() == [list(p) for p in expected_negative]


@pytest.mark.parametrize("asked", [200, 2_500])  # rejection sampling; listing then choosing
def test_sample_pairs_samples_distinct_negatives_deterministically(asked):
    labels = np.random.default_rng(1).integers(0, 12, size=90)
    expected_positive, expected_negative = brute_force_pairs(labels)
    assert asked < len(expected_negative) <= 2 * 2_500  # both code paths are really taken
    positive, negative = v.sample_pairs(labels, negative_pairs=asked, seed=4)
    assert positive.tolist() == [list(p) for p in expected_positive]
    assert negative.shape == (asked, 2)
    assert len({tuple(p) for p in negative.tolist()}) == asked  # without replacement
    assert {tuple(p) for p in negative.tolist()} <= set(expected_negative)  # i < j, different labels
    assert negative.tolist() == sorted(negative.tolist())
    np.testing.assert_array_equal(v.sample_pairs(labels, negative_pairs=asked, seed=4)[1], negative)
    assert not np.array_equal(v.sample_pairs(labels, negative_pairs=asked, seed=5)[1], negative)


@pytest.mark.parametrize("asked", [3, 9])  # rejection sampling; listing then choosing
def test_sampled_negatives_are_uniform(asked):
    labels = np.array([0, 0, 1, 1, 2, 3])  # 15 pairs, 2 positive, 13 negative
    _, every_negative = brute_force_pairs(labels)
    runs = 1500
    counts = dict.fromkeys(every_negative, 0)
    for seed in range(runs):
        for pair in v.sample_pairs(labels, negative_pairs=asked, seed=seed)[1].tolist():
            counts[tuple(pair)] += 1
    share = asked / len(every_negative)
    spread = np.sqrt(runs * share * (1 - share))
    assert all(abs(c - runs * share) < 5 * spread for c in counts.values()), counts


def test_sample_pairs_is_quick_and_valid_for_50k_images():
    labels = np.random.default_rng(0).integers(0, 5_000, size=50_000)
    positive, negative = v.sample_pairs(labels)
    sizes = np.bincount(labels)
    assert len(positive) == int((sizes * (sizes - 1) // 2).sum())
    assert negative.shape == (v.DEFAULT_NEGATIVE_PAIRS, 2)
    assert (negative[:, 0] < negative[:, 1]).all() and (labels[negative[:, 0]] != labels[negative[:, 1]]).all()
    assert len(np.unique(negative[:, 0] * 50_000 + negative[:, 1])) == len(negative)
    assert (labels[positive[:, 0]] == labels[positive[:, 1]]).all() and (positive[:, 0] < positive[:, 1]).all()


# ---- scores and curves -------------------------------------------------------------------------

def test_cosine_scores_match_the_formula_in_small_blocks(monkeypatch):
    embeddings, labels = clustered(identities=4, per_identity=3, dim=6)
    embeddings[2] *= 40.0  # scale must not matter
    pairs = np.array(list(itertools.combinations(range(len(labels)), 2)))
    monkeypatch.setattr(v, "_SCORE_PAIRS", 7)
    expected = [float(embeddings[i] @ embeddings[j] / np.linalg.norm(embeddings[i]) / np.linalg.norm(embeddings[j]))
                for i, j in pairs]
    scores = v.cosine_scores(embeddings, pairs)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def ties_and_spread(seed=0, positives=300, negatives=2_000):
    rng = np.random.default_rng(seed)  # rounded, so many scores tie within and across the two sets
    return (np.round(rng.normal(0.5, 0.2, positives), 2), np.round(rng.normal(0.1, 0.2, negatives), 2))


def test_roc_and_auc_match_sklearn_with_ties():
    positive, negative = ties_and_spread()
    far, tar, thresholds = v.roc(positive, negative)
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    expected_far, expected_tar, expected_thresholds = roc_curve(truth, np.r_[positive, negative],
                                                                drop_intermediate=False)
    np.testing.assert_allclose(far, expected_far, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tar, expected_tar, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(thresholds[1:], expected_thresholds[1:])
    assert (far[0], tar[0], far[-1], tar[-1]) == (0, 0, 1, 1) and thresholds[0] == np.inf
    assert v.roc_auc(positive, negative) == pytest.approx(roc_auc_score(truth, np.r_[positive, negative]), abs=1e-12)
    # and the definition itself: P(pos > neg) + P(pos == neg) / 2 over every pair
    difference = positive[:, None] - negative[None, :]
    assert v.roc_auc(positive, negative) == pytest.approx((difference > 0).mean() + 0.5 * (difference == 0).mean(),
                                                          abs=1e-12)


def test_tar_at_far_on_hand_built_scores():
    negative = np.arange(1000) / 1000  # 0.000 .. 0.999, one negative per step
    positive = np.r_[np.full(30, 9995 / 10000), np.full(20, 9985 / 10000),
                     np.full(5, 998 / 1000),  # equal to the 2nd largest negative: never above it
                     np.full(10, 9895 / 10000), np.full(35, 0.5)]
    cases = {
        1e-3: 0.50,  # one negative (0.999) may pass: positives above 0.998
        2e-3: 0.55,  # 0.999 and 0.998 may pass: positives above 0.997
        1e-2: 0.65,  # ten may pass: positives above 0.989
        0.5: 1.00,  # 500 may pass: positives above 0.499
        1.0: 1.00,
        1e-4: 0.30,  # below 1/N: the strictest threshold admitting no negative (above 0.999)
        0.0: 0.30,
        1.5e-3: 0.50,  # between steps: still one negative
    }
    for far, expected in cases.items():
        assert v.tar_at_far(positive, negative, far) == pytest.approx(expected, abs=1e-12), far


def test_tar_at_far_is_the_best_roc_point_within_the_far():
    positive, negative = ties_and_spread(seed=3)
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    fpr, tpr, _ = roc_curve(truth, np.r_[positive, negative], drop_intermediate=False)
    for far in (0.0, 1e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 0.33, 1.0):
        assert v.tar_at_far(positive, negative, far) == pytest.approx(tpr[fpr <= far].max(), abs=1e-12), far


def brute_force_best_accuracy(positive, negative):
    scores = np.unique(np.r_[positive, negative])
    candidates = list(scores) + [scores.max() + 1.0]
    return max(((positive >= t).sum() + (negative < t).sum()) / (len(positive) + len(negative)) for t in candidates)


def test_best_threshold_accuracy():
    positive, negative = ties_and_spread(seed=5)
    accuracy, threshold = v.best_threshold_accuracy(positive, negative)
    assert accuracy == pytest.approx(brute_force_best_accuracy(positive, negative), abs=1e-12)
    achieved = ((positive >= threshold).sum() + (negative < threshold).sum()) / (len(positive) + len(negative))
    assert achieved == pytest.approx(accuracy, abs=1e-12)
    # 0.8 and 0.7 both get 5 of 6 right; the tie goes to the higher threshold
    assert v.best_threshold_accuracy([0.9, 0.8, 0.7], [0.1, 0.75, 0.2]) == (pytest.approx(5 / 6), 0.8)
    # rejecting everything is best: the threshold is finite and just above the top score
    accuracy, threshold = v.best_threshold_accuracy([0.0], [0.5, 0.6, 0.7])
    assert accuracy == 0.75 and 0.7 < threshold < 0.7 + 1e-12


# ---- retrieval ---------------------------------------------------------------------------------

def test_retrieval_top1_matches_brute_force_across_blocks(monkeypatch):
    embeddings, labels = clustered(identities=15, per_identity=4, dim=8, spread=0.7, singletons=6, seed=2)
    expected = brute_force_top1(embeddings, labels)
    assert 0.3 < expected < 0.95  # a mix of hits and misses, so the comparison means something
    assert v.retrieval_top1(embeddings, labels) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(v, "_RETRIEVAL_ROWS", 7)  # several query blocks, the last one partial
    assert v.retrieval_top1(embeddings, labels) == pytest.approx(expected, abs=1e-12)
    assert v.retrieval_top1(embeddings.astype(np.float32), labels) == pytest.approx(expected, abs=1e-12)


def test_retrieval_singletons_are_distractors_not_queries_and_ties_take_the_lowest_index():
    e = np.eye(4)
    # identities A (0, 1), B (2, 3) perfectly separated; three singletons elsewhere
    embeddings = np.stack([e[0], e[0], e[1], e[1], e[2], e[3], e[2] + e[3]])
    labels = np.array([0, 0, 1, 1, 7, 8, 9])
    assert v.retrieval_top1(embeddings, labels) == 1.0  # 4 queries, not 7 (singletons would all miss)
    # singleton image 1 is identical to images 0 and 2 (identity 0): query 0 ties 1 and 2 and takes
    # the lowest index, the singleton, a miss; query 2 ties 0 and 1 and takes 0, a hit
    embeddings = np.stack([e[0], e[0], e[0], e[1], e[1]])
    labels = np.array([0, 5, 0, 1, 1])
    assert v.retrieval_top1(embeddings, labels) == 0.75
    assert v.retrieval_top1(embeddings, labels) == brute_force_top1(embeddings, labels)



def test_retrieval_hits_are_the_brute_force_query_by_query():
    embeddings, labels = clustered(identities=12, per_identity=4, dim=8, spread=0.8, singletons=5, seed=3)
    hits = v.retrieval_hits(embeddings, labels)
    queries = [q for q in range(len(labels)) if np.sum(labels == labels[q]) >= 2]
    expected = []
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    for q, hit in zip(queries, hits, strict=True):
        others = [g for g in range(len(labels)) if g != q]
        best = max(others, key=lambda g: (unit[q] @ unit[g], -g))  # ties: the lowest index
        expected.append(labels[best] == labels[q])
    assert 0 < hits.mean() < 1 and hits.tolist() == expected
    assert v.retrieval_top1(embeddings, labels) == pytest.approx(brute_force_top1(embeddings, labels), abs=1e-12)


@pytest.mark.parametrize("lost,gained", [(0, 0), (9, 0), (0, 9), (5, 3), (12, 3), (40, 25), (1, 1), (0, 1)])
def test_paired_change_p_value_is_the_exact_two_sided_sign_test(lost, gained):
    from scipy.stats import binomtest

    expected = 1.0 if lost + gained == 0 else binomtest(lost, lost + gained, 0.5).pvalue
    assert v.paired_change_p_value(lost, gained) == pytest.approx(expected, rel=1e-12)


def test_paired_change_p_value_of_a_one_sided_split_and_of_bad_counts():
    assert v.paired_change_p_value(9, 0) == pytest.approx(2 / 2**9)  # 9 lost, none gained: 0.0039
    with pytest.raises(ValueError, match="counts, got -1 and 2"):
        v.paired_change_p_value(-1, 2)


def test_zero_rows_when_kept_are_misses_and_nobodys_neighbour(monkeypatch):
    """zero_rows="zero" (a quantized model's collapsed output): a zero or non-finite row finds no
    neighbour and is never found; the other rows' neighbours are the brute force's among the
    rows that have a direction."""
    embeddings, labels = clustered(identities=6, per_identity=5, dim=8, spread=0.6, seed=4)
    embeddings[[3, 11, 12]] = 0.0
    embeddings[20, 2] = np.nan
    dead = {3, 11, 12, 20}
    unit = [None if i in dead else e / np.linalg.norm(e) for i, e in enumerate(embeddings)]
    expected = []
    for q in range(len(unit)):
        candidates = [(float(unit[q] @ unit[g]), -g) for g in range(len(unit))
                      if unit[q] is not None and g != q and unit[g] is not None]
        expected.append(-max(candidates)[1] if candidates else -1)
    with pytest.raises(ValueError, match="4 of 30 embedding rows are zero or non-finite"):
        v.nearest_neighbours(embeddings)
    monkeypatch.setattr(v, "_RETRIEVAL_ROWS", 7)  # several query blocks
    np.testing.assert_array_equal(v.nearest_neighbours(embeddings, zero_rows="zero"), expected)
    hits = sum(expected[q] >= 0 and labels[expected[q]] == labels[q] for q in range(len(labels)))
    assert 0 < hits < len(labels) - len(dead)  # hits and misses among the live rows
    assert v.retrieval_top1(embeddings, labels, zero_rows="zero") == pytest.approx(hits / len(labels), abs=1e-12)
    kept = v.unit_rows(embeddings, zero_rows="zero")
    assert not kept[sorted(dead)].any() and np.allclose(np.linalg.norm(np.delete(kept, sorted(dead), 0), axis=1), 1)
    with pytest.raises(ValueError, match="zero_rows must be one of raise, zero, got 'skip'"):
        v.unit_rows(embeddings, zero_rows="skip")


# ---- the report --------------------------------------------------------------------------------

def test_identical_identity_clusters_score_perfectly():
    embeddings, labels = clustered(identities=12, per_identity=4, spread=0.0, singletons=3)
    report = v.verification_report(embeddings, labels)
    assert set(report) == set(v.VERIFICATION_KEYS) | {"positive_pairs", "negative_pairs", "identities", "images"}
    assert all(type(report[k]) is float for k in v.VERIFICATION_KEYS)
    assert all(type(report[k]) is int for k in ("positive_pairs", "negative_pairs", "identities", "images"))
    assert report["retrieval_top1"] == 1.0 and report["roc_auc"] == 1.0 and report["best_accuracy"] == 1.0
    assert report["tar_at_far_1e-3"] == 1.0 and report["tar_at_far_1e-2"] == 1.0
    assert report["positive_pairs"] == 12 * 6 and report["negative_pairs"] == 51 * 50 // 2 - 72
    assert report["identities"] == 15 and report["images"] == 51


def test_random_embeddings_score_at_chance_and_report_agrees_with_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 100, size=1_500)
    embeddings = rng.normal(size=(1_500, 64)).astype(np.float32)
    report, curves = v.evaluate_embeddings(embeddings, labels, negative_pairs=20_000, seed=3)
    assert abs(report["roc_auc"] - 0.5) < 0.03
    assert report["retrieval_top1"] < 0.05  # chance is about 1/100
    positive, negative = v.sample_pairs(labels, 20_000, seed=3)
    scores = np.r_[v.cosine_scores(embeddings, positive), v.cosine_scores(embeddings, negative)]
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    assert report["roc_auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert report["positive_pairs"] == len(positive) and report["negative_pairs"] == 20_000
    np.testing.assert_array_equal(curves["positive_scores"], scores[:len(positive)])
    assert report["best_threshold"] == curves["best_threshold"]
    assert v.verification_report(embeddings, labels, 20_000, 3) == report
    np.testing.assert_array_equal(v.verification_curves(embeddings, labels, 20_000, 3)["far"], curves["far"])


@pytest.mark.parametrize("call, words", [
    (lambda: v.sample_pairs([4, 4, 4]), "1 identity"),
    (lambda: v.sample_pairs([1, 2, 3]), "no positive pair: every identity has a single image"),
    (lambda: v.sample_pairs([[1, 1, 2]]), "(1, 3)"),
    (lambda: v.sample_pairs([1, 1, 2], negative_pairs=0), "got 0"),
    (lambda: v.retrieval_top1(np.eye(3), [1, 2, 3]), "no positive pair"),
    (lambda: v.retrieval_top1(np.eye(3), [1, 1]), "3 embeddings but 2 labels"),
    (lambda: v.cosine_scores(np.array([[1.0, 0], [0, 0], [0, 0]]), [[0, 1]]), "2 of 3 embedding rows"),
    (lambda: v.cosine_scores(np.array([[1.0, 0], [np.nan, 1]]), [[0, 1]]), "1 of 2 embedding rows"),
    (lambda: v.cosine_scores(np.eye(2), [[0, 2]]), "0..2, but there are 2 embeddings"),
    (lambda: v.verification_report(np.array([[1.0, 0], [1, 0], [0, 0]]), [1, 1, 2]), "1 of 3"),
    (lambda: v.tar_at_far([0.5], [0.1], 1.5), "got 1.5"),
    (lambda: v.roc([], [0.1]), "positive_scores"),
    (lambda: v.roc_auc([0.2], [np.inf]), "negative_scores holds 1 non-finite"),
])
def test_bad_input_names_the_bad_value(call, words):
    with pytest.raises(ValueError) as error:
        call()
    assert words in str(error.value) and "\n" not in str(error.value)


# ---- plots -------------------------------------------------------------------------------------

def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def curves():
    embeddings, labels = clustered(identities=60, per_identity=6, dim=16, spread=0.9, singletons=20, seed=11)
    return v.verification_curves(embeddings, labels, negative_pairs=30_000)


def test_plot_roc_draws_the_curve_and_marks_tar_at_far(curves, tmp_path):
    path = tmp_path / plots.ROC_PNG
    figure = plots.plot_roc(curves, str(path), title="b0 arcface")
    assert png_size(path) == (700, 500)
    axes = figure.axes[0]
    line = axes.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), curves["far"])
    np.testing.assert_array_equal(line.get_ydata(), curves["tar"])
    assert axes.get_xscale() == "log"
    assert axes.get_xlim() == pytest.approx((1 / 30_000, 1.0))
    positive, negative = curves["positive_scores"], curves["negative_scores"]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    for far in (1e-3, 1e-2):
        value = v.tar_at_far(positive, negative, far)
        point = next(line for line in axes.get_lines() if line.get_label().startswith(f"TAR@FAR={far:g}"))
        assert (point.get_xdata()[0], point.get_ydata()[0]) == (far, value)
        assert f"TAR@FAR={far:g}: {value:.4f}" in labels
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    assert f"AUC {roc_auc_score(truth, np.r_[positive, negative]):.4f}" in axes.get_title()


def test_plot_similarity_histograms_draws_densities_and_the_threshold(curves, tmp_path):
    path = tmp_path / plots.SIMILARITY_PNG
    figure = plots.plot_similarity_histograms(curves, str(path))
    assert png_size(path) == (800, 450)
    axes = figure.axes[0]
    same, different = axes.containers
    bins = np.r_[[bar.get_x() for bar in same], same.patches[-1].get_x() + same.patches[-1].get_width()]
    scores = np.r_[curves["positive_scores"], curves["negative_scores"]]
    assert len(bins) == 101 and -1 <= bins[0] <= scores.min() and scores.max() <= bins[-1] <= 1  # every pair drawn
    for bars, scores in ((same, curves["positive_scores"]), (different, curves["negative_scores"])):
        density, _ = np.histogram(scores, bins=bins, density=True)
        np.testing.assert_allclose([bar.get_height() for bar in bars], density, rtol=1e-12)
        np.testing.assert_allclose([bar.get_x() for bar in bars], bins[:-1], atol=1e-12)
    assert same.patches[0].get_label() == f"same identity ({len(curves['positive_scores']):,} pairs)"
    assert different.patches[0].get_label() == f"different identities ({len(curves['negative_scores']):,} pairs)"
    threshold_line = axes.get_lines()[0]
    assert list(threshold_line.get_xdata()) == [curves["best_threshold"]] * 2
    assert f"{curves['best_threshold']:.5g}" in threshold_line.get_label()


def test_similarity_histograms_zoom_on_bunched_scores():
    """Embeddings that share a direction give pair cosines in [0.9997, 1]: bars over [-1, 1] would
    be one bar; the bins follow the scores."""
    rng = np.random.default_rng(0)
    curves = {"positive_scores": rng.uniform(0.99985, 1.0, 500), "negative_scores": rng.uniform(0.9997, 0.9999, 500),
              "best_threshold": 0.99975}
    axes = plots.plot_similarity_histograms(curves).axes[0]
    low, high = axes.get_xlim()
    assert 0.9996 < low < 0.9997 and 1.0 <= high < 1.0001
    assert sum(bar.get_height() > 0 for bar in axes.containers[0]) > 30  # the positives spread over many bars
    assert "best threshold 0.99975" in axes.get_lines()[0].get_label()
