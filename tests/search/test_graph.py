"""Tests for regagg_jax.search.graph: the kNN of every region slot and the
reciprocal kNN affinity of diffusion, against float64 numpy."""

import numpy as np
import pytest

from regagg_jax.search import graph
from regagg_jax.search import region_index

DIM = 8


def make_database(rng, num_images=12, num_regions=3, invalid=0.2):
  x = rng.normal(size=(num_images, num_regions, DIM))
  x[1::2] += x[::2]  # pairs of related images
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  valid = rng.random((num_images, num_regions)) >= invalid
  valid[:, 0] = True
  return np.where(valid[..., None], x, 0).astype(np.float32), valid


def reference_knn(descriptors, valid, k):
  """float64 exact kNN of every slot (itself excluded) as sets of slots."""
  flat = descriptors.reshape(-1, DIM).astype(np.float64)
  flat_valid = valid.reshape(-1)
  similarity = flat @ flat.T
  similarity[~flat_valid] = -np.inf
  similarity[:, ~flat_valid] = -np.inf
  np.fill_diagonal(similarity, -np.inf)
  order = np.argsort(-similarity, axis=1)[:, :k]
  return [
    set(row) if flat_valid[i] else set() for i, row in enumerate(order)
  ], similarity


def reference_affinity(descriptors, valid, k, gamma):
  """Dense float64 W of the reciprocal kNN graph (Iscen et al.)."""
  knn, similarity = reference_knn(descriptors, valid, k)
  size = len(knn)
  weights = np.zeros((size, size))
  for i in range(size):
    for j in knn[i]:
      if i in knn[j]:
        weights[i, j] = max(similarity[i, j], 0.0) ** gamma
  return weights


def dense(neighbours, weights, size):
  matrix = np.zeros((size, size))
  for i, (row, values) in enumerate(zip(neighbours, weights)):
    for j, w in zip(row, values):
      if j >= 0:
        matrix[i, j] += w
  return matrix


def build_table(descriptors, valid, k, gamma=3.0, region_index_=None):
  nearest = graph.nearest_regions(
    descriptors, valid, k=k, region_index=region_index_, chunk=7
  )
  return graph.mutual_affinity(*nearest(0, valid.size), gamma=gamma)


@pytest.mark.parametrize('kind', ['exact', 'flat'])
def test_graph_is_the_reciprocal_knn_affinity(kind):
  descriptors, valid = make_database(np.random.default_rng(0))
  built = (
    None
    if kind == 'exact'
    else region_index.build(descriptors, valid, kind='flat')
  )
  neighbours, weights = build_table(descriptors, valid, 4, 3.0, built)
  assert neighbours.shape == weights.shape == (valid.size, 4)
  assert neighbours.dtype == np.int32 and weights.dtype == np.float32
  matrix = dense(neighbours, weights, valid.size)
  expected = reference_affinity(descriptors, valid, 4, 3.0)
  np.testing.assert_allclose(matrix, expected, atol=1e-6)
  np.testing.assert_array_equal(matrix, matrix.T)  # exactly symmetric
  assert not matrix[~valid.reshape(-1)].any()  # invalid slots isolated


def test_graph_refuses_k_beyond_the_regions():
  descriptors, valid = make_database(np.random.default_rng(0), num_images=2)
  with pytest.raises(ValueError, match='k must be in'):
    graph.nearest_regions(descriptors, valid, k=int(valid.sum()))


def test_nearest_regions_are_the_float64_knn_in_any_range():
  descriptors, valid = make_database(np.random.default_rng(2))
  nearest = graph.nearest_regions(descriptors, valid, k=3, chunk=5)
  knn, similarity = reference_knn(descriptors, valid, 3)
  found, scores = nearest(4, 23)  # a range across chunks
  assert found.shape == scores.shape == (19, 3) and found.dtype == np.int32
  for row, slot in enumerate(range(4, 23)):
    assert set(found[row][found[row] >= 0]) == knn[slot], slot
    if knn[slot]:
      want = np.sort(similarity[slot, sorted(knn[slot])])[::-1]
      np.testing.assert_allclose(scores[row], want, atol=1e-6)
      assert np.all(np.diff(scores[row]) <= 0)  # best first
    else:  # an invalid slot has no edge
      assert np.all(found[row] == -1) and np.all(np.isneginf(scores[row]))


def test_mutual_affinity_keeps_reciprocal_edges_by_hand():
  # 0 <-> 1 reciprocal; 2 -> 0 one-way; 1 -> 2 one-way; a -1 pad.
  neighbours = np.array([[1, -1], [0, 2], [0, -1]], np.int32)
  similarities = np.array(
    [[0.8, -np.inf], [0.6, 0.5], [0.9, -np.inf]], np.float32
  )
  got_neighbours, got_weights = graph.mutual_affinity(
    neighbours, similarities, gamma=2.0
  )
  np.testing.assert_array_equal(got_neighbours, [[1, -1], [0, -1], [-1, -1]])
  weight = ((0.8 + 0.6) / 2) ** 2  # the mean of s_01 and s_10, ^gamma
  np.testing.assert_allclose(
    got_weights, [[weight, 0], [weight, 0], [0, 0]], rtol=1e-6
  )
  assert got_weights.dtype == np.float32


@pytest.mark.parametrize('chunk', [1, 5, 64, 1 << 16])
def test_mutual_affinity_in_any_chunk_is_the_reference(chunk):
  # A random table: distinct neighbours in random order, -1 pads anywhere,
  # s_ij != s_ji, so each lookup of i in row j and its s_ji is exercised.
  rng = np.random.default_rng(3)
  size, k, gamma = 40, 6, 3.0
  neighbours = np.full((size, k), -1, np.int32)
  for i in range(size):
    count = rng.integers(0, k + 1)
    others = rng.permutation(np.delete(np.arange(size), i))[:count]
    neighbours[i, rng.permutation(k)[:count]] = others
  similarities = np.where(
    neighbours >= 0, rng.uniform(-0.2, 1.0, (size, k)), -np.inf
  ).astype(np.float32)
  score = {
    (i, j): float(s)
    for i in range(size)
    for j, s in zip(neighbours[i], similarities[i])
    if j >= 0
  }
  want = np.zeros((size, size))
  for (i, j), s in score.items():
    if (j, i) in score:
      want[i, j] = max((s + score[j, i]) / 2, 0.0) ** gamma
  got_neighbours, got_weights = graph.mutual_affinity(
    neighbours, similarities, gamma=gamma, chunk=chunk
  )
  np.testing.assert_allclose(
    dense(got_neighbours, got_weights, size), want, rtol=1e-5, atol=1e-7
  )
  kept = got_neighbours >= 0  # kept edges stay in their kNN place
  np.testing.assert_array_equal(got_neighbours[kept], neighbours[kept])
  assert np.all(got_weights[~kept] == 0)
  assert np.count_nonzero(want) == int(kept.sum()) > 0
