"""Tests of regional diffusion (search.diffusion; storage.graphs' round trip)
against float64 numpy references written here (the graph: test_graph.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.search import diffusion
from regagg_jax.search import graph
from regagg_jax.storage import graphs
from tests.search.test_graph import DIM
from tests.search.test_graph import build_table
from tests.search.test_graph import dense
from tests.search.test_graph import make_database


def dense_solution(
  descriptors,
  valid,
  neighbours,
  weights,
  query,
  query_valid,
  candidates,
  options,
):
  """float64 numpy reference of diffusion.diffuse (module doc, steps 1-4)."""
  num_regions = descriptors.shape[1]
  slots = (candidates[:, None] * num_regions + np.arange(num_regions)).ravel()
  local_valid = valid[candidates].reshape(-1)
  full = dense(neighbours, weights, valid.size)
  affinity = full[np.ix_(slots, slots)] * np.outer(local_valid, local_valid)
  degree = affinity.sum(axis=1)
  scale = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0)
  transition = scale[:, None] * affinity * scale[None]
  flat = descriptors[candidates].reshape(-1, DIM).astype(np.float64)
  summed = np.zeros(len(slots))
  reached = np.zeros(len(slots), bool)
  kq = min(options.query_neighbours, len(slots))
  for a in np.nonzero(query_valid)[0]:
    similarity = np.where(local_valid, flat @ query[a], -np.inf)
    for j in np.argsort(-similarity)[:kq]:
      if np.isfinite(similarity[j]):
        summed[j] += similarity[j]
        reached[j] = True
  summed = np.where(reached, summed, -np.inf)
  y = np.zeros(len(slots))
  for j in np.argsort(-summed)[:kq]:
    if np.isfinite(summed[j]):
      y[j] = max(summed[j], 0.0) ** options.gamma
  system = np.eye(len(slots)) - options.alpha * transition
  f = np.linalg.solve(system, y).reshape(len(candidates), num_regions)
  return f, y


def gmp_pool(f, vectors, valid, lam=1.0):
  scores = []
  for t in range(f.shape[0]):
    v = vectors[t][valid[t]].astype(np.float64)
    b = np.linalg.solve(v @ v.T + lam * np.eye(len(v)), np.ones(len(v)))
    scores.append(b @ f[t][valid[t]])
  return np.array(scores)


def run_diffuse(
  descriptors,
  valid,
  neighbours,
  weights,
  query,
  query_valid,
  candidates,
  options,
):
  rows = np.maximum(candidates, 0)
  num_regions = descriptors.shape[1]
  slots = (rows[:, None] * num_regions + np.arange(num_regions)).ravel()
  return jax.jit(diffusion.diffuse, static_argnames=('options',))(
    query,
    query_valid,
    candidates.astype(np.int32),
    descriptors[rows],
    valid[rows] & (candidates >= 0)[:, None],
    neighbours[slots],
    weights[slots],
    options=options,
  )


@pytest.mark.parametrize('pooling', ['gmp', 'sum', 'max'])
def test_cg_diffusion_equals_a_dense_solve(pooling):
  rng = np.random.default_rng(1)
  descriptors, valid = make_database(rng)
  neighbours, weights = build_table(descriptors, valid, 5)
  query, query_valid = descriptors[2].copy(), valid[2].copy()
  query = query + 0.3 * rng.normal(size=query.shape).astype(np.float32)
  query /= np.linalg.norm(query, axis=-1, keepdims=True)
  candidates = np.array([0, 2, 3, 5, 6, 7, 9, 11])
  options = diffusion.DiffusionOptions(
    query_neighbours=6, iterations=200, tolerance=1e-7, pooling=pooling
  )
  scores = run_diffuse(
    descriptors,
    valid,
    neighbours,
    weights,
    query,
    query_valid,
    candidates,
    options,
  )
  assert scores.shape == (8,) and scores.dtype == jnp.float32
  f, _ = dense_solution(
    descriptors,
    valid,
    neighbours,
    weights,
    query,
    query_valid,
    candidates,
    options,
  )
  local_valid = valid[candidates]
  expected = {
    'gmp': gmp_pool(f, descriptors[candidates], local_valid),
    'sum': np.where(local_valid, f, 0).sum(axis=1),
    'max': np.where(local_valid, f, -np.inf).max(axis=1),
  }[pooling]
  np.testing.assert_allclose(scores, expected, rtol=2e-4, atol=2e-5)


def test_conjugate_gradient_equals_numpy_solve():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(30, 30))
  matrix = a @ a.T + 30 * np.eye(30)
  y = rng.normal(size=30)
  solve = jax.jit(
    lambda m, v: diffusion.conjugate_gradient(
      lambda f: m @ f, v, iterations=60, tolerance=1e-7
    )
  )
  f = solve(jnp.asarray(matrix, jnp.float32), jnp.asarray(y, jnp.float32))
  np.testing.assert_allclose(
    f, np.linalg.solve(matrix, y), rtol=1e-4, atol=1e-5
  )


def test_the_iteration_budget_stops_cg():
  matrix = np.diag(np.arange(1.0, 41.0)).astype(np.float32)
  y = np.ones(40, np.float32)
  solve = lambda steps: diffusion.conjugate_gradient(
    lambda f: jnp.asarray(matrix) @ f, y, iterations=steps, tolerance=0.0
  )
  exact = np.linalg.solve(matrix.astype(np.float64), y)
  assert np.abs(solve(2) - exact).max() > 1e-2  # 2 steps: not converged
  np.testing.assert_allclose(solve(40), exact, rtol=1e-4)


def test_alpha_to_zero_is_the_knn_ranking():
  rng = np.random.default_rng(3)
  descriptors, valid = make_database(rng)
  neighbours, weights = build_table(descriptors, valid, 5)
  query, query_valid = descriptors[4], valid[4]
  candidates = np.arange(12)
  options = diffusion.DiffusionOptions(
    alpha=1e-6, query_neighbours=8, pooling='sum'
  )
  scores = run_diffuse(
    descriptors,
    valid,
    neighbours,
    weights,
    query,
    query_valid,
    candidates,
    options,
  )
  _, y = dense_solution(
    descriptors,
    valid,
    neighbours,
    weights,
    query,
    query_valid,
    candidates,
    options,
  )
  knn = y.reshape(12, -1).sum(axis=1)  # pooled y: the kNN scores
  np.testing.assert_allclose(scores, knn, rtol=1e-4, atol=1e-7)
  reached = knn > 0
  assert reached.sum() >= 2
  np.testing.assert_array_equal(
    np.argsort(-np.asarray(scores))[: reached.sum()],
    np.argsort(-knn)[: reached.sum()],
  )


def test_padded_and_invalid_regions_change_nothing():
  rng = np.random.default_rng(4)
  descriptors, valid = make_database(rng, num_images=10, num_regions=3)
  options = diffusion.DiffusionOptions(query_neighbours=6, pooling='gmp')
  query, query_valid = descriptors[1], valid[1]
  neighbours, weights = build_table(descriptors, valid, 4)
  candidates = np.arange(10)
  base = run_diffuse(
    descriptors,
    valid,
    neighbours,
    weights,
    query,
    query_valid,
    candidates,
    options,
  )
  # Two padded region slots per image (garbage vectors, invalid), a padded
  # invalid query region, and -1 candidates appended.
  padded = np.concatenate(
    [descriptors, rng.normal(size=(10, 2, DIM)).astype(np.float32)], axis=1
  )
  padded_valid = np.concatenate([valid, np.zeros((10, 2), bool)], axis=1)
  padded_query = np.concatenate([query, np.ones((1, DIM), np.float32)])
  padded_query_valid = np.concatenate([query_valid, [False]])
  table = build_table(padded, padded_valid, 4)
  more = np.concatenate([candidates, [-1, -1]])
  scores = run_diffuse(
    padded,
    padded_valid,
    *table,
    padded_query,
    padded_query_valid,
    more,
    options,
  )
  np.testing.assert_allclose(scores[:10], base, rtol=1e-5, atol=1e-7)
  assert np.all(np.isneginf(scores[10:]))


def test_graph_round_trips_through_disk_and_resumes(tmp_path):
  descriptors, valid = make_database(np.random.default_rng(5))
  nearest = graph.nearest_regions(descriptors, valid, k=4)
  calls = []

  def counting(start, stop):
    calls.append(start)
    return nearest(start, stop)

  path = tmp_path / 'graph'
  os.makedirs(path)
  first = nearest(0, 10)  # a shard left by a killed run
  np.savez(path / 'knn_00000.npz', neighbours=first[0], similarities=first[1])
  neighbours, weights, metadata = graphs.build_graph(
    str(path),
    counting,
    graph.mutual_affinity,
    num_slots=valid.size,
    shard_rows=10,
    metadata={'k': 4, 'store_hash': 'abc'},
  )
  assert calls == [10, 20, 30]  # shard 0 was kept
  expected = build_table(descriptors, valid, 4)
  np.testing.assert_array_equal(neighbours, expected[0])
  np.testing.assert_array_equal(weights, expected[1])
  loaded = graphs.load_graph(str(path), expected={'store_hash': 'abc'})
  np.testing.assert_array_equal(loaded[0], neighbours)
  np.testing.assert_array_equal(loaded[1], weights)
  assert loaded[2]['k'] == 4 and loaded[2] == metadata
  assert not list(path.glob('knn_*')) and not list(path.glob('*.tmp-*'))
  with pytest.raises(ValueError, match='built with'):
    graphs.load_graph(str(path), expected={'store_hash': 'other'})
  shard = path / 'graph_00001.npz'
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='graph_00001.npz'):
    graphs.load_graph(str(path))
  meta = json.loads((path / 'metadata.json').read_text())
  assert len(meta['sha256']) == 4 and meta['format_version'] == 1
