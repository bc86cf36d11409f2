"""Tests of regagg_jax.search.similarity against brute-force references (eq. 7, 8)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.search import similarity

DIM = 16


def unit_rows(rng, *shape):
  x = rng.normal(size=(*shape, DIM))
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_case(
  rng, num_queries=4, num_images=23, query_regions=3, database_regions=5
):
  query = unit_rows(rng, num_queries, query_regions)
  database = unit_rows(rng, num_images, database_regions)
  query_valid = rng.random((num_queries, query_regions)) < 0.7
  query_valid[:, 0] = True
  query_valid[-1] = False  # a query without a valid region
  database_valid = rng.random((num_images, database_regions)) < 0.6
  database_valid[3] = False  # a database image without a valid region
  database_valid[4] = False
  database_valid[4, 2] = True  # a single valid region
  return query, query_valid, database, database_valid


def brute_force(query, query_valid, database, database_valid):
  """eq. (7): max of float64 dot products over all valid region pairs."""
  scores = np.full((query.shape[0], database.shape[0]), -np.inf)
  best = np.zeros(scores.shape, np.int64)
  for q in range(query.shape[0]):
    for n in range(database.shape[0]):
      for a in range(query.shape[1]):
        for b in range(database.shape[1]):
          if query_valid[q, a] and database_valid[n, b]:
            value = float(query[q, a].astype(np.float64) @ database[n, b])
            if value > scores[q, n]:
              scores[q, n], best[q, n] = value, b
  return scores, best


@pytest.mark.parametrize('chunk_size', [5, 23, 64])
def test_image_similarity_equals_brute_force(chunk_size):
  rng = np.random.default_rng(0)
  case = make_case(rng)
  fn = jax.jit(
    functools.partial(similarity.image_similarity, chunk_size=chunk_size)
  )
  scores, best = fn(*case)
  assert scores.shape == (4, 23) and scores.dtype == jnp.float32
  assert best.shape == (4, 23) and best.dtype == jnp.int32
  expected_scores, expected_best = brute_force(*case)
  np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
  finite = np.isfinite(expected_scores)
  np.testing.assert_array_equal(np.asarray(best)[finite], expected_best[finite])
  assert np.all(np.isneginf(np.asarray(scores)[~finite]))
  assert not finite[-1].any() and not finite[:, 3].any()


def test_padded_images_and_regions_change_nothing():
  rng = np.random.default_rng(1)
  query, query_valid, database, database_valid = make_case(rng)
  scores, best = similarity.image_similarity(
    query, query_valid, database, database_valid, chunk_size=8
  )
  pad_db = np.concatenate([database, unit_rows(rng, 6, 5)])
  pad_db = np.concatenate([pad_db, unit_rows(rng, 29, 2)], axis=1)
  pad_db_valid = np.zeros((29, 7), bool)
  pad_db_valid[:23, :5] = database_valid
  pad_query = np.concatenate([query, unit_rows(rng, 4, 1)], axis=1)
  pad_query_valid = np.concatenate([query_valid, np.zeros((4, 1), bool)], 1)
  padded_scores, padded_best = similarity.image_similarity(
    pad_query, pad_query_valid, pad_db, pad_db_valid, chunk_size=8
  )
  np.testing.assert_array_equal(padded_scores[:, :23], scores)
  np.testing.assert_array_equal(padded_best[:, :23], best)
  assert np.all(np.isneginf(np.asarray(padded_scores)[:, 23:]))


def reference_query_expansion(
  query,
  query_valid,
  database,
  database_valid,
  scores,
  best,
  n_qe,
  include_query,
):
  """eq. (8) by hand: average best-matched regions of the top n_qe, l2, max."""
  new_scores = np.full(scores.shape, -np.inf)
  for q in range(scores.shape[0]):
    order = sorted(range(scores.shape[1]), key=lambda n: -scores[q, n])[:n_qe]
    kept = [n for n in order if np.isfinite(scores[q, n])]
    if not kept:
      continue
    expanded = sum(database[n, best[q, n]].astype(np.float64) for n in kept)
    if include_query:
      top = database[kept[0], best[q, kept[0]]]
      candidates = [a for a in range(query.shape[1]) if query_valid[q, a]]
      own = max(candidates, key=lambda a: float(query[q, a] @ top))
      expanded = expanded + query[q, own]
    expanded = expanded / np.linalg.norm(expanded)
    for n in range(database.shape[0]):
      values = [
        expanded @ database[n, b]
        for b in range(database.shape[1])
        if database_valid[n, b]
      ]
      if values:
        new_scores[q, n] = max(values)
  return new_scores


@pytest.mark.parametrize('include_query', [False, True])
@pytest.mark.parametrize('n_qe', [1, 4, 23])
def test_query_expansion_matches_eq8(n_qe, include_query):
  rng = np.random.default_rng(2)
  query, query_valid, database, database_valid = make_case(rng)
  scores, best = similarity.image_similarity(
    query, query_valid, database, database_valid, chunk_size=10
  )
  fn = jax.jit(
    functools.partial(
      similarity.query_expansion,
      n_qe=n_qe,
      include_query=include_query,
      chunk_size=10,
    )
  )
  got = fn(
    query, database, database_valid, scores, best, query_valid=query_valid
  )
  expected = reference_query_expansion(
    query,
    query_valid,
    database,
    database_valid,
    np.asarray(scores),
    np.asarray(best),
    n_qe,
    include_query,
  )
  assert got.shape == (4, 23) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.all(np.isneginf(np.asarray(got)[-1]))  # query without a region


def test_bad_inputs_raise():
  rng = np.random.default_rng(3)
  query, query_valid, database, database_valid = make_case(rng)
  with pytest.raises(ValueError):
    similarity.image_similarity(
      query[0], query_valid[0], database, database_valid
    )
  with pytest.raises(ValueError):
    similarity.image_similarity(
      query, query_valid, database[..., :8], database_valid
    )
  with pytest.raises(ValueError):
    similarity.image_similarity(
      query, query_valid[:, :2], database, database_valid
    )
  with pytest.raises(TypeError):
    similarity.image_similarity(
      query, query_valid.astype(np.int32), database, database_valid
    )
  with pytest.raises(TypeError):
    similarity.image_similarity(
      query.astype(np.int32), query_valid, database, database_valid
    )
  scores, best = similarity.image_similarity(
    query, query_valid, database, database_valid
  )
  with pytest.raises(ValueError):
    similarity.query_expansion(
      query, database, database_valid, scores, best, n_qe=24
    )
  with pytest.raises(ValueError):
    similarity.query_expansion(
      query, database, database_valid, scores[:2], best
    )


def largest_intermediate(jaxpr):
  """Largest element count of any value in a jaxpr, sub-jaxprs included."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, int(np.prod(var.aval.shape)))
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)
      if hasattr(inner, 'eqns'):
        largest = max(largest, largest_intermediate(inner))
  return largest


def test_no_full_query_database_region_tensor():
  rng = np.random.default_rng(4)
  case = make_case(rng, num_queries=8, num_images=64)
  fn = functools.partial(similarity.image_similarity, chunk_size=16)
  largest = largest_intermediate(jax.make_jaxpr(fn)(*case).jaxpr)
  full = 8 * 64 * 3 * 5  # (Q, N, Mq, Mt)
  assert largest == max(case[2].size, 8 * 16 * 3 * 5) < full
