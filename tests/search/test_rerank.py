"""Tests of re-ranking: alpha-QE (similarity.query_expansion with alpha)
against float64 numpy references, the RERANK table and the diffusion
re-rank of a first search (search.rerank)."""

import jax
import numpy as np
import pytest

from regagg_jax.search import diffusion
from regagg_jax.search import graph
from regagg_jax.search import index_search
from regagg_jax.search import region_index
from regagg_jax.search import rerank
from regagg_jax.search import similarity

DIM = 12


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_case(rng, num_queries=3, num_images=15, mq=3, mt=4):
  query = unit(rng.normal(size=(num_queries, mq, DIM))).astype(np.float32)
  database = unit(rng.normal(size=(num_images, mt, DIM)))
  database[:5] = unit(database[:5] + query[0, :1, None])  # related to q 0
  database = database.astype(np.float32)
  query_valid = rng.random((num_queries, mq)) < 0.8
  query_valid[:, 0] = True
  database_valid = rng.random((num_images, mt)) < 0.7
  database_valid[:, 0] = True
  return query, query_valid, database, database_valid


def reference_eq7(query, query_valid, database, database_valid):
  """float64 eq. (7) scores and best-matched database regions."""
  pairs = np.einsum('qad,nbd->qnab', query.astype(np.float64), database)
  mask = query_valid[:, None, :, None] & database_valid[None, :, None, :]
  pairs = np.where(mask, pairs, -np.inf)
  per_region = pairs.max(axis=2)
  return per_region.max(axis=-1), per_region.argmax(axis=-1)


def reference_alpha_qe(query, query_valid, database, database_valid, n, alpha):
  """float64 regional alpha-QE: l2(q* + sum_i max(s_i, 0)^alpha d_i) of the
  top n results' best regions d_i, q* the query region closest to d_1, then
  eq. (8) (max over database regions)."""
  scores, best = reference_eq7(query, query_valid, database, database_valid)
  new = np.empty_like(scores)
  for q in range(query.shape[0]):
    top = np.argsort(-scores[q], kind='stable')[:n]
    matched = database[top, best[q, top]].astype(np.float64)
    weights = np.maximum(scores[q, top], 0.0) ** alpha
    to_top1 = np.where(query_valid[q], query[q] @ matched[0], -np.inf)
    expanded = query[q, np.argmax(to_top1)] + weights @ matched
    expanded /= np.linalg.norm(expanded)
    regions = np.where(database_valid, database @ expanded, -np.inf)
    new[q] = regions.max(axis=1)
  return new


def run_query_expansion(case, n, alpha, include_query=True):
  query, query_valid, database, database_valid = case
  scores, best = similarity.image_similarity(*case)
  return jax.jit(
    similarity.query_expansion,
    static_argnames=('n_qe', 'include_query', 'chunk_size'),
  )(
    query,
    database,
    database_valid,
    scores,
    best,
    n_qe=n,
    include_query=include_query,
    query_valid=query_valid,
    alpha=alpha,
    chunk_size=4,
  )


@pytest.mark.parametrize('alpha', [1.0, 3.0])
def test_regional_alpha_qe_equals_the_numpy_reference(alpha):
  case = make_case(np.random.default_rng(0))
  scores = run_query_expansion(case, 4, alpha)
  assert scores.shape == (3, 15) and scores.dtype == np.float32
  expected = reference_alpha_qe(*case, 4, alpha)
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_global_alpha_qe_is_radenovic_formula():
  """M = 1 (the global baselines): q' = l2(q + sum_i s_i^alpha d_i)."""
  rng = np.random.default_rng(1)
  query = unit(rng.normal(size=(2, 1, DIM))).astype(np.float32)
  database = unit(rng.normal(size=(20, 1, DIM)))
  database[:6] = unit(database[:6] + 2 * query[0])
  database = database.astype(np.float32)
  case = (query, np.ones((2, 1), bool), database, np.ones((20, 1), bool))
  scores = run_query_expansion(case, 5, 3.0)
  q, d = query[:, 0].astype(np.float64), database[:, 0].astype(np.float64)
  first = q @ d.T
  expected = np.empty_like(first)
  for i in range(2):
    top = np.argsort(-first[i])[:5]
    expanded = q[i] + (np.maximum(first[i, top], 0) ** 3) @ d[top]
    expected[i] = d @ (expanded / np.linalg.norm(expanded))
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_alpha_zero_without_the_query_is_eq8():
  case = make_case(np.random.default_rng(2))
  query, query_valid, database, database_valid = case
  scores, best = reference_eq7(*case)
  new = run_query_expansion(case, 3, 0.0, include_query=False)
  for q in range(3):
    top = np.argsort(-scores[q], kind='stable')[:3]
    expanded = database[top, best[q, top]].astype(np.float64).sum(axis=0)
    expanded /= np.linalg.norm(expanded)
    expected = np.where(database_valid, database @ expanded, -np.inf).max(1)
    np.testing.assert_allclose(new[q], expected, rtol=1e-5, atol=1e-6)


def test_rerank_table_names_the_four_options():
  assert set(rerank.RERANK) == {'none', 'qe', 'alpha_qe', 'diffusion'}
  assert rerank.RERANK['alpha_qe'].expansion
  assert rerank.RERANK['alpha_qe'].alpha_weighted
  assert not rerank.RERANK['qe'].alpha_weighted
  assert rerank.RERANK['diffusion'].diffusion
  assert not any(rerank.RERANK['none'])


def test_diffusion_rerank_orders_the_candidates_and_keeps_the_rest():
  rng = np.random.default_rng(3)
  query, query_valid, database, database_valid = make_case(rng, mt=3)
  database = np.where(database_valid[..., None], database, 0)
  nearest = graph.nearest_regions(database, database_valid, k=6)
  neighbours, weights = graph.mutual_affinity(*nearest(0, 45))
  first, _ = reference_eq7(query, query_valid, database, database_valid)
  first = first.astype(np.float32)
  first[1, 7] = -np.inf  # not found by the first search
  options = diffusion.DiffusionOptions(query_neighbours=8, pooling='sum')
  scores, ranks = rerank.rerank_diffusion(
    query,
    query_valid,
    database,
    database_valid,
    first,
    neighbours,
    weights,
    truncate=9,
    options=options,
  )
  assert scores.shape == ranks.shape == (3, 15) and ranks.dtype == np.int64
  for q in range(3):
    order = np.argsort(-first[q], kind='stable')
    assert sorted(ranks[q]) == list(range(15))
    np.testing.assert_array_equal(ranks[q, 9:], order[9:])  # the rest
    assert set(ranks[q, :9]) == set(order[:9])
    top = ranks[q, :9]
    assert np.all(np.diff(scores[q, top][np.isfinite(scores[q, top])]) <= 0)
    assert np.all(np.isneginf(scores[q, order[9:]]))
    rows = np.maximum(order[:9], 0)
    slots = (rows[:, None] * 3 + np.arange(3)).reshape(-1)
    candidates = np.where(np.isfinite(first[q, order[:9]]), order[:9], -1)
    direct = diffusion.diffuse(
      query[q],
      query_valid[q],
      candidates.astype(np.int32),
      database[rows],
      database_valid[rows] & (candidates >= 0)[:, None],
      neighbours[slots],
      weights[slots],
      options=options,
    )
    np.testing.assert_allclose(scores[q, order[:9]], direct, rtol=1e-6)
  assert 7 not in ranks[1, :9] or np.isneginf(scores[1, 7])


def test_diffusion_rerank_refuses_a_graph_of_another_database():
  rng = np.random.default_rng(4)
  query, query_valid, database, database_valid = make_case(rng)
  with pytest.raises(ValueError, match='region slots'):
    rerank.rerank_diffusion(
      query,
      query_valid,
      database,
      database_valid,
      np.zeros((3, 15), np.float32),
      np.zeros((10, 4), np.int32),
      np.zeros((10, 4), np.float32),
    )


def test_alpha_qe_through_a_region_index_equals_the_exact_path():
  case = make_case(np.random.default_rng(5))
  query, query_valid, database, database_valid = case
  database = np.where(database_valid[..., None], database, 0)
  built = region_index.build(database, database_valid, kind='flat')
  scores, ranks, _ = index_search.search(
    built,
    database,
    database_valid,
    query,
    query_valid,
    k_regions=60,
    shortlist=15,
    qe=True,
    n_qe=4,
    include_query=True,
    alpha=3.0,
  )
  expected = reference_alpha_qe(
    query, query_valid, database, database_valid, 4, 3.0
  )
  for q in range(3):
    np.testing.assert_allclose(
      scores[q], expected[q, ranks[q]], rtol=1e-5, atol=1e-6
    )
