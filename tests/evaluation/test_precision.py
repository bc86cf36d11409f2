"""Tests for regagg_jax.evaluation.precision: the trapezoidal AP of
compute_ap.cpp, mAP and revisitop's mP@k, against line-by-line references."""

import numpy as np
import pytest

from regagg_jax.evaluation import precision


def reference_ap(ranked, positives, junk):
  """compute_ap.cpp, line by line: recall/precision steps over non-junk items."""
  positives, junk = set(positives), set(junk)
  old_recall, old_precision, ap, hits, seen = 0.0, 1.0, 0.0, 0, 0
  for item in ranked:
    if item in junk:
      continue
    if item in positives:
      hits += 1
    recall = hits / len(positives)
    precision = hits / (seen + 1.0)
    ap += (recall - old_recall) * (old_precision + precision) / 2.0
    old_recall, old_precision = recall, precision
    seen += 1
  return ap


def _reference_precision(ranked, positives, junk, kappa):
  """revisitop precision at kappa: k lowered to the last retrieved positive's rank."""
  kept = [i for i in ranked if i not in set(junk)]
  ranks = [r + 1 for r, i in enumerate(kept) if i in set(positives)]
  if not ranks:
    return 0.0
  cutoff = min(max(ranks), kappa)
  return sum(r <= cutoff for r in ranks) / cutoff


# --- average_precision on hand-computed rankings -----------------------------

HAND_CASES = [
  # (ranked, positives, junk, AP computed by hand from the trapezoid rule)
  # positives 3 (r=1, j=0): 0/1 + 1/2; 1 (r=3, j=1): 1/3 + 2/4  -> (1/2 + 5/6) / 4
  ([5, 3, 7, 1, 9], [3, 1], [], (0.5 + 5.0 / 6.0) / 4.0),
  # junk 8 before the first positive is dropped: 3 at r=0 (1 + 1), 1 at r=2 (1/2 + 2/3)
  ([8, 3, 7, 1], [3, 1], [8], (2.0 + 0.5 + 2.0 / 3.0) / 4.0),
  # positive at rank 0: (1 + 1) / 2
  ([2, 4, 6], [2], [], 1.0),
  # second positive never retrieved: (1 + 1) / (2 * 2)
  ([2, 4, 6], [2, 9], [], 0.5),
  # every other image junk: the positive moves to rank 0
  ([1, 2, 5], [5], [1, 2], 1.0),
  # all ranked images junk: nothing retrieved
  ([1, 2, 3], [5], [1, 2, 3], 0.0),
  # last of four: 0 at r=3 -> (0/3 + 1/4) / 2
  ([7, 8, 9, 0], [0], [], 0.125),
  # a junk image after the positive changes nothing: 4 at r=1 -> (0 + 1/2) / 2
  ([6, 4, 3], [4], [3], 0.25),
]


@pytest.mark.parametrize('ranked, positives, junk, expected', HAND_CASES)
def test_average_precision_hand_cases(ranked, positives, junk, expected):
  ap = precision.average_precision(ranked, positives, junk)
  assert isinstance(ap, float)
  np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
  np.testing.assert_allclose(
    ap, reference_ap(ranked, positives, junk), rtol=0, atol=1e-12
  )


def test_average_precision_works_on_names_like_compute_ap_cpp():
  ranked = ['b', 'junk', 'a', 'c']
  ap = precision.average_precision(ranked, ['a', 'c'], ['junk'])
  np.testing.assert_allclose(
    ap, reference_ap(ranked, {'a', 'c'}, {'junk'}), atol=1e-12
  )
  np.testing.assert_allclose(
    ap, (0.0 + 0.5 + 0.5 + 2.0 / 3.0) / 4.0, atol=1e-12
  )


def test_average_precision_no_positives_is_nan():
  assert np.isnan(precision.average_precision([1, 2, 3], [], [1]))


def test_average_precision_rejects_bad_input():
  with pytest.raises(ValueError, match='1-D'):
    precision.average_precision([[1, 2]], [1], [])
  with pytest.raises(ValueError, match='repeated'):
    precision.average_precision([1, 2, 1], [1], [])


def test_batched_ap_matches_loop_reference_on_random_rankings():
  rng = np.random.default_rng(0)
  num_images, ranks, positives, junk = 60, [], [], []
  for _ in range(40):
    labels = rng.choice(3, size=num_images, p=[0.7, 0.2, 0.1])
    positives.append(np.flatnonzero(labels == 1))
    junk.append(np.flatnonzero(labels == 2))
    ranks.append(rng.permutation(num_images))
  ranks = np.stack(ranks)
  scores = precision.compute_map(ranks, positives, junk, kappas=(1, 5, 10))
  for q in range(len(ranks)):
    np.testing.assert_allclose(
      scores.aps[q], reference_ap(ranks[q], positives[q], junk[q]), atol=1e-12
    )
    np.testing.assert_allclose(
      scores.aps[q],
      precision.average_precision(ranks[q], positives[q], junk[q]),
      atol=1e-12,
    )
    for c, kappa in enumerate((1, 5, 10)):
      np.testing.assert_allclose(
        scores.precisions[q, c],
        _reference_precision(ranks[q], positives[q], junk[q], kappa),
        atol=1e-12,
      )
  assert scores.aps.shape == (40,) and scores.precisions.shape == (40, 3)
  assert scores.aps.dtype == np.float64
  np.testing.assert_allclose(scores.mean_ap, np.mean(scores.aps), atol=1e-12)
  # A truncated ranking (top 25 of 60) scores the unretrieved positives as misses.
  truncated = precision.compute_map(ranks[:, :25], positives, junk)
  for q in range(len(ranks)):
    np.testing.assert_allclose(
      truncated.aps[q],
      reference_ap(ranks[q, :25], positives[q], junk[q]),
      atol=1e-12,
    )


def test_revisited_precision_at_k_by_hand():
  # junk-free 1-based ranks of the positives: 2 and 3 (junk 9 dropped from rank 2).
  ranks = np.array([[4, 9, 1, 2, 5, 6]])
  scores = precision.compute_map(ranks, [[1, 2]], [[9]], kappas=(1, 2, 5, 10))
  # k=1: 0/1; k=2: 1/2; k=5: k lowered to 3 -> 2/3; k=10: 2/3.
  np.testing.assert_allclose(
    scores.precisions[0], [0.0, 0.5, 2.0 / 3.0, 2.0 / 3.0], atol=1e-12
  )


def test_queries_without_positives_are_skipped():
  ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 2, 3]])
  scores = precision.compute_map(ranks, [[0], [], [0, 2]], [[], [1], [1]])
  assert np.isnan(scores.aps[1]) and np.all(np.isnan(scores.precisions[1]))
  # query 2: junk 1 dropped -> 0 at r=0 (1 + 1), 2 at r=1 (1/1 + 2/2) -> 4 / 4
  np.testing.assert_allclose(scores.aps[2], 1.0, atol=1e-12)
  # The empty query is left out (counted as 0 the mean would be 2/3).
  np.testing.assert_allclose(scores.mean_ap, 1.0, atol=1e-12)
  assert np.isnan(precision.mean_average_precision(ranks[:1], [[]], [[]]))


def test_junk_wins_over_positive_but_still_counts():
  # 1 is positive and junk: skipped, but P = 2 as in compute_ap.cpp -> (1 + 1) / 4.
  ap = precision.average_precision([1, 0, 2], [0, 1], [1])
  np.testing.assert_allclose(ap, 0.5, atol=1e-12)
  scores = precision.compute_map(np.array([[1, 0, 2]]), [[0, 1]], [[1]])
  np.testing.assert_allclose(scores.aps[0], 0.5, atol=1e-12)


def test_batched_rejects_bad_input():
  with pytest.raises(ValueError, match=r'\(Q, R\)'):
    precision.compute_map(np.arange(4), [[0]], None)
  with pytest.raises(TypeError, match='integer'):
    precision.compute_map(np.zeros((1, 3)), [[0]], None)
  with pytest.raises(ValueError, match='repeated'):
    precision.compute_map(np.array([[0, 1, 0]]), [[0]], None)
  with pytest.raises(ValueError, match='negative'):
    precision.compute_map(np.array([[0, -1]]), [[0]], None)
  with pytest.raises(ValueError, match='need 1 positive'):
    precision.compute_map(np.array([[0, 1]]), [[0], [1]], None)
  with pytest.raises(ValueError, match='kappas'):
    precision.compute_map(np.array([[0, 1]]), [[0]], None, kappas=(0, 5))


def test_ranks_from_scores_descending_and_stable():
  scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 0.0, 0.0, 2.0]])
  np.testing.assert_array_equal(
    precision.ranks_from_scores(scores), [[1, 3, 2, 0], [3, 0, 1, 2]]
  )
  with pytest.raises(ValueError):
    precision.ranks_from_scores(np.zeros(3))
