"""Tests for regagg_jax.evaluation.metrics (official trapezoidal AP and the benchmark protocols)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import metrics

GND = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'gnd'
needs_gnd = pytest.mark.skipif(
  not GND.is_dir(), reason='ground truth not beside the clone'
)


def _reference_ap(ranked, positives, junk):
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


def _mat_gnd(name):
  mat = scipy.io.loadmat(GND / name / f'gnd_{name}.mat')
  gnd = mat['gnd'][:, 0]
  positives = [g['ok'].ravel().astype(np.int64) - 1 for g in gnd]
  junk = [g['junk'].ravel().astype(np.int64) - 1 for g in gnd]
  return (
    len(mat['imlist']),
    positives,
    junk,
    mat['qidx'].ravel().astype(np.int64) - 1,
  )


def _pkl_gnd(name):
  with open(GND / name / f'gnd_{name}.pkl', 'rb') as f:
    data = pickle.load(f)
  labels = {
    k: [np.asarray(g[k], np.int64) for g in data['gnd']]
    for k in ('easy', 'hard', 'junk')
  }
  return len(data['imlist']), labels


def _perfect_and_worst(num_images, positives, junk):
  """Rankings with the positives first / last (junk in the middle / at the front)."""
  perfect, worst = [], []
  for pos, jnk in zip(positives, junk):
    other = np.setdiff1d(np.arange(num_images), np.union1d(pos, jnk))
    perfect.append(np.concatenate([pos, jnk, other]))
    worst.append(np.concatenate([jnk, other, pos]))
  return np.stack(perfect), np.stack(worst)


def _worst_ap(num_kept, num_positives):
  """AP when the P positives take the last P of `num_kept` junk-free ranks (by hand)."""
  first = num_kept - num_positives
  return sum(
    j / max(first + j, 1) if first + j else 1.0 for j in range(num_positives)
  ) / (2 * num_positives) + sum(
    (j + 1) / (first + j + 1) for j in range(num_positives)
  ) / (2 * num_positives)


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
  ap = metrics.average_precision(ranked, positives, junk)
  assert isinstance(ap, float)
  np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
  np.testing.assert_allclose(
    ap, _reference_ap(ranked, positives, junk), rtol=0, atol=1e-12
  )


def test_average_precision_works_on_names_like_compute_ap_cpp():
  ranked = ['b', 'junk', 'a', 'c']
  ap = metrics.average_precision(ranked, ['a', 'c'], ['junk'])
  np.testing.assert_allclose(
    ap, _reference_ap(ranked, {'a', 'c'}, {'junk'}), atol=1e-12
  )
  np.testing.assert_allclose(
    ap, (0.0 + 0.5 + 0.5 + 2.0 / 3.0) / 4.0, atol=1e-12
  )


def test_average_precision_no_positives_is_nan():
  assert np.isnan(metrics.average_precision([1, 2, 3], [], [1]))


def test_average_precision_rejects_bad_input():
  with pytest.raises(ValueError, match='1-D'):
    metrics.average_precision([[1, 2]], [1], [])
  with pytest.raises(ValueError, match='repeated'):
    metrics.average_precision([1, 2, 1], [1], [])


def test_batched_ap_matches_loop_reference_on_random_rankings():
  rng = np.random.default_rng(0)
  num_images, ranks, positives, junk = 60, [], [], []
  for _ in range(40):
    labels = rng.choice(3, size=num_images, p=[0.7, 0.2, 0.1])
    positives.append(np.flatnonzero(labels == 1))
    junk.append(np.flatnonzero(labels == 2))
    ranks.append(rng.permutation(num_images))
  ranks = np.stack(ranks)
  scores = metrics.compute_map(ranks, positives, junk, kappas=(1, 5, 10))
  for q in range(len(ranks)):
    np.testing.assert_allclose(
      scores.aps[q], _reference_ap(ranks[q], positives[q], junk[q]), atol=1e-12
    )
    np.testing.assert_allclose(
      scores.aps[q],
      metrics.average_precision(ranks[q], positives[q], junk[q]),
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
  truncated = metrics.compute_map(ranks[:, :25], positives, junk)
  for q in range(len(ranks)):
    np.testing.assert_allclose(
      truncated.aps[q],
      _reference_ap(ranks[q, :25], positives[q], junk[q]),
      atol=1e-12,
    )


def test_revisited_precision_at_k_by_hand():
  # junk-free 1-based ranks of the positives: 2 and 3 (junk 9 dropped from rank 2).
  ranks = np.array([[4, 9, 1, 2, 5, 6]])
  scores = metrics.compute_map(ranks, [[1, 2]], [[9]], kappas=(1, 2, 5, 10))
  # k=1: 0/1; k=2: 1/2; k=5: k lowered to 3 -> 2/3; k=10: 2/3.
  np.testing.assert_allclose(
    scores.precisions[0], [0.0, 0.5, 2.0 / 3.0, 2.0 / 3.0], atol=1e-12
  )


def test_queries_without_positives_are_skipped():
  ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 2, 3]])
  scores = metrics.compute_map(ranks, [[0], [], [0, 2]], [[], [1], [1]])
  assert np.isnan(scores.aps[1]) and np.all(np.isnan(scores.precisions[1]))
  # query 2: junk 1 dropped -> 0 at r=0 (1 + 1), 2 at r=1 (1/1 + 2/2) -> 4 / 4
  np.testing.assert_allclose(scores.aps[2], 1.0, atol=1e-12)
  # The empty query is left out (counted as 0 the mean would be 2/3).
  np.testing.assert_allclose(scores.mean_ap, 1.0, atol=1e-12)
  assert np.isnan(metrics.mean_average_precision(ranks[:1], [[]], [[]]))


def test_junk_wins_over_positive_but_still_counts():
  # 1 is positive and junk: skipped, but P = 2 as in compute_ap.cpp -> (1 + 1) / 4.
  ap = metrics.average_precision([1, 0, 2], [0, 1], [1])
  np.testing.assert_allclose(ap, 0.5, atol=1e-12)
  scores = metrics.compute_map(np.array([[1, 0, 2]]), [[0, 1]], [[1]])
  np.testing.assert_allclose(scores.aps[0], 0.5, atol=1e-12)


def test_batched_rejects_bad_input():
  with pytest.raises(ValueError, match=r'\(Q, R\)'):
    metrics.compute_map(np.arange(4), [[0]], None)
  with pytest.raises(TypeError, match='integer'):
    metrics.compute_map(np.zeros((1, 3)), [[0]], None)
  with pytest.raises(ValueError, match='repeated'):
    metrics.compute_map(np.array([[0, 1, 0]]), [[0]], None)
  with pytest.raises(ValueError, match='negative'):
    metrics.compute_map(np.array([[0, -1]]), [[0]], None)
  with pytest.raises(ValueError, match='need 1 positive'):
    metrics.compute_map(np.array([[0, 1]]), [[0], [1]], None)
  with pytest.raises(ValueError, match='kappas'):
    metrics.compute_map(np.array([[0, 1]]), [[0]], None, kappas=(0, 5))
  with pytest.raises(ValueError, match='setting'):
    metrics.revisited_ground_truth([[0]], [[1]], [[2]], setting='medium-hard')


def test_ranks_from_scores_descending_and_stable():
  scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 0.0, 0.0, 2.0]])
  np.testing.assert_array_equal(
    metrics.ranks_from_scores(scores), [[1, 3, 2, 0], [3, 0, 1, 2]]
  )
  with pytest.raises(ValueError):
    metrics.ranks_from_scores(np.zeros(3))


# --- the real ground-truth files ---------------------------------------------


@needs_gnd
@pytest.mark.parametrize('name', ['oxford5k', 'paris6k', 'holidays'])
def test_perfect_and_worst_rankings_on_real_ground_truth(name):
  num_images, positives, junk, _ = _mat_gnd(name)
  perfect, worst = _perfect_and_worst(num_images, positives, junk)
  perfect_map = metrics.mean_average_precision(perfect, positives, junk)
  assert perfect_map == pytest.approx(1.0, abs=1e-12)
  expected = np.mean(
    [
      _worst_ap(num_images - np.unique(j).size, np.unique(p).size)
      for p, j in zip(positives, junk)
    ]
  )
  got = metrics.mean_average_precision(worst, positives, junk)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  for q in (
    0,
    len(positives) - 1,
  ):  # spot-check against the line-by-line reference
    np.testing.assert_allclose(
      metrics.average_precision(worst[q], positives[q], junk[q]),
      _reference_ap(worst[q], positives[q], junk[q]),
      atol=1e-9,
    )
  assert 0.0 < got < 0.05


@needs_gnd
def test_holidays_protocol_drops_the_query():
  num_images, positives, junk, queries = _mat_gnd('holidays')
  # The .mat already lists the query as its only junk image.
  assert all(j.tolist() == [q] for j, q in zip(junk, queries))
  rng = np.random.default_rng(1)
  ranks = np.stack([rng.permutation(num_images) for _ in queries])
  got = metrics.holidays_map(ranks, positives, queries)
  # holidays_map.py: ranks after the query shift down by one.
  expected = np.mean(
    [
      _reference_ap([i for i in r if i != q], p, [])
      for r, p, q in zip(ranks, positives, queries)
    ]
  )
  np.testing.assert_allclose(got, expected, atol=1e-12)
  # The query on top of its own list does not change a perfect score.
  perfect = np.stack(
    [
      np.concatenate(
        [[q], p, np.setdiff1d(np.arange(num_images), np.append(p, q))]
      )
      for p, q in zip(positives, queries)
    ]
  )
  assert metrics.holidays_map(perfect, positives, queries) == pytest.approx(
    1.0, abs=1e-12
  )


@needs_gnd
@pytest.mark.parametrize(
  'name, num_images, easy_count, hard_count, junk_count',
  [
    ('roxford5k', 4993, 3029, 2497, 1356),
    ('rparis6k', 6322, 6874, 10350, 7153),
  ],
)
def test_revisited_settings_from_pkl(
  name, num_images, easy_count, hard_count, junk_count
):
  size, labels = _pkl_gnd(name)
  assert size == num_images and len(labels['easy']) == 70
  easy, hard, junk = labels['easy'], labels['hard'], labels['junk']
  assert sum(map(len, easy)) == easy_count and sum(map(len, hard)) == hard_count
  assert sum(map(len, junk)) == junk_count
  expected = {
    'easy': (easy, [np.concatenate([j, h]) for j, h in zip(junk, hard)]),
    'medium': ([np.concatenate([e, h]) for e, h in zip(easy, hard)], junk),
    'hard': (hard, [np.concatenate([j, e]) for j, e in zip(junk, easy)]),
  }
  for setting, (want_pos, want_junk) in expected.items():
    pos, ign = metrics.revisited_ground_truth(easy, hard, junk, setting=setting)
    for a, b in zip(pos, want_pos):
      np.testing.assert_array_equal(np.sort(a), np.sort(b))
    for a, b in zip(ign, want_junk):
      np.testing.assert_array_equal(np.sort(a), np.sort(b))
  # Perfect medium ranking (easy+hard first) is perfect in all three settings.
  medium_pos, medium_junk = expected['medium']
  perfect, _ = _perfect_and_worst(num_images, medium_pos, medium_junk)
  results = metrics.compute_revisited_map(perfect, easy, hard, junk)
  for setting in metrics.REVISITED_SETTINGS:
    assert results[setting].mean_ap == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(results[setting].mean_precision, 1.0, atol=1e-12)
  # Queries without easy images are NaN in Easy and left out (roxford5k has two).
  empty_easy = sum(len(e) == 0 for e in easy)
  assert np.isnan(results['easy'].aps).sum() == empty_easy
  assert empty_easy == (2 if name == 'roxford5k' else 0)


# --- UKBench -----------------------------------------------------------------


def test_ukbench_score_and_map_on_crafted_rankings():
  groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  ranks = np.array(
    [
      [0, 1, 2, 3, 4, 5, 6, 7],  # 4 of group 0 in the top 4
      [1, 4, 0, 5, 2, 3, 6, 7],  # 1, 0 -> 2
      [4, 5, 6, 7, 0, 1, 2, 3],  # none -> 0
      [3, 2, 4, 1, 0, 5, 6, 7],  # 3, 2, 1 -> 3
    ]
  )
  query_groups = groups[[0, 1, 2, 3]]
  score = metrics.ukbench_score(ranks, query_groups, groups)
  assert score == pytest.approx((4 + 2 + 0 + 3) / 4.0, abs=1e-12)
  perfect = metrics.ukbench_score(ranks[:1], query_groups[:1], groups)
  assert perfect == 4.0
  # mAP with the 4 group members (query included) as positives.
  expected = np.mean(
    [
      _reference_ap(r, np.flatnonzero(groups == g), [])
      for r, g in zip(ranks, query_groups)
    ]
  )
  np.testing.assert_allclose(
    metrics.ukbench_map(ranks, query_groups, groups), expected, atol=1e-12
  )
  with pytest.raises(ValueError, match='top_k'):
    metrics.ukbench_score(ranks[:, :3], query_groups, groups)
  with pytest.raises(ValueError, match='query_groups'):
    metrics.ukbench_score(ranks, groups, groups)


def test_skipped_query_and_database_image_take_no_part():
  """An unreadable query ranked in index order would score AP 1.0 and be
  counted; an unreadable positive would lower every AP: both are left out."""
  dataset = datasets.Dataset(
    'folder',
    'custom',
    images=('a', 'b', 'c', 'd', 'e'),
    queries=('q0', 'q1', 'q2'),
    query_indices=np.array([-1, -1, -1]),
    boxes=None,
    positives=(np.array([2, 4]), np.array([0, 1]), np.array([1, 3])),
    junk=(np.zeros(0, np.int64),) * 3,
  )
  present = np.array([0, 1, 2, 4])  # image 3 ('d') unreadable
  ranks = np.array([[4, 0, 2, 1], [0, 1, 2, 4], [2, 1, 0, 4]])  # q1 unreadable
  scored = np.array([True, False, True])
  before = metrics.evaluate(dataset, ranks)
  after = metrics.evaluate(dataset, ranks, scored=scored, present=present)
  expected = np.mean(
    [
      _reference_ap([4, 0, 2, 1], [2, 4], []),
      _reference_ap([2, 1, 0, 4], [1], []),
    ]
  )
  assert after['mAP'] == pytest.approx(expected, abs=1e-12)
  assert before['mAP'] != pytest.approx(expected, abs=1e-3)
  trimmed = metrics.exclude_skipped(dataset, scored, present)
  assert trimmed.queries == ('q0', 'q2')
  np.testing.assert_array_equal(trimmed.positives[1], [1])


def test_skipped_ukbench_image_leaves_its_group():
  dataset = datasets.load('samples')
  ranks = np.tile(np.arange(len(dataset.images)), (len(dataset.queries), 1))
  present = np.arange(1, len(dataset.images))  # image 0 unreadable
  ranks = ranks[:, 1:]
  scored = np.arange(len(dataset.queries)) > 0
  trimmed = metrics.exclude_skipped(dataset, scored, present)
  assert trimmed.groups[0] == -1 and len(trimmed.queries) == len(scored) - 1
  scores = metrics.evaluate(dataset, ranks, scored=scored, present=present)
  groups = dataset.groups
  expected = np.mean(
    [np.sum(groups[ranks[q, :4]] == groups[q]) for q in range(1, len(scored))]
  )
  assert scores['N-S'] == pytest.approx(expected, abs=1e-12)
