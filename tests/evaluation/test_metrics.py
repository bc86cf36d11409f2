"""Tests for regagg_jax.evaluation.metrics: the benchmarks' protocols on
their real ground-truth files and crafted rankings."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation import precision
from tests.evaluation.test_precision import reference_ap

GND = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'gnd'
needs_gnd = pytest.mark.skipif(
  not GND.is_dir(), reason='ground truth not beside the clone'
)


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


# --- the real ground-truth files ---------------------------------------------


@needs_gnd
@pytest.mark.parametrize('name', ['oxford5k', 'paris6k', 'holidays'])
def test_perfect_and_worst_rankings_on_real_ground_truth(name):
  num_images, positives, junk, _ = _mat_gnd(name)
  perfect, worst = _perfect_and_worst(num_images, positives, junk)
  perfect_map = precision.mean_average_precision(perfect, positives, junk)
  assert perfect_map == pytest.approx(1.0, abs=1e-12)
  expected = np.mean(
    [
      _worst_ap(num_images - np.unique(j).size, np.unique(p).size)
      for p, j in zip(positives, junk)
    ]
  )
  got = precision.mean_average_precision(worst, positives, junk)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  for q in (
    0,
    len(positives) - 1,
  ):  # spot-check against the line-by-line reference
    np.testing.assert_allclose(
      precision.average_precision(worst[q], positives[q], junk[q]),
      reference_ap(worst[q], positives[q], junk[q]),
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
      reference_ap([i for i in r if i != q], p, [])
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


def test_revisited_ground_truth_refuses_an_unknown_setting():
  with pytest.raises(ValueError, match='setting'):
    metrics.revisited_ground_truth([[0]], [[1]], [[2]], setting='medium-hard')


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
      reference_ap(r, np.flatnonzero(groups == g), [])
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
      reference_ap([4, 0, 2, 1], [2, 4], []),
      reference_ap([2, 1, 0, 4], [1], []),
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
