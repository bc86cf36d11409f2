"""Tests for regagg_jax.search.index_search: shortlists from a region index
re-ranked exactly, against float64 eq. (7) / eq. (8)."""

import faiss
import numpy as np
import pytest

from regagg_jax.search import index_search
from regagg_jax.search import region_index
from tests.search.conftest import NUM_IMAGES
from tests.search.conftest import NUM_QUERIES
from tests.search.conftest import normalize
from tests.search.conftest import reference_similarity


def reference_qe(database, valid, scores, best, candidates, n_qe):
  """float64 eq. (8) over each query's candidate images: (Q, N) scores."""
  expanded = np.full((len(candidates), NUM_IMAGES), -np.inf)
  for q, rows in enumerate(candidates):
    top = rows[np.argsort(-scores[q, rows], kind='stable')[:n_qe]]
    average = normalize(database[top, best[q, top]].astype(np.float64).sum(0))
    region_scores = np.where(valid[rows], database[rows] @ average, -np.inf)
    expanded[q, rows] = region_scores.max(axis=1)
  return expanded


def test_flat_with_full_shortlist_is_exact_eq7(data):
  database, valid, query, query_valid = data
  index = region_index.build(database, valid, kind='flat')
  scores, ranks, best = index_search.search(
    index,
    database,
    valid,
    query,
    query_valid,
    k_regions=int(valid.sum()),
    shortlist=NUM_IMAGES,
    query_batch=3,
  )
  expected, expected_best = reference_similarity(
    query, query_valid, database, valid
  )
  assert scores.shape == ranks.shape == best.shape == (NUM_QUERIES, NUM_IMAGES)
  assert scores.dtype == np.float32 and ranks.dtype == np.int64
  assert best.dtype == np.int32
  found = NUM_IMAGES - 1  # image 7 has no valid region: never retrieved
  np.testing.assert_array_equal(ranks[:, found:], -1)
  assert np.all(np.isneginf(scores[:, found:]))
  exact_order = np.argsort(-expected, axis=1, kind='stable')[:, :found]
  np.testing.assert_array_equal(ranks[:, :found], exact_order)
  np.testing.assert_allclose(
    scores[:, :found],
    np.take_along_axis(expected, exact_order, axis=1),
    atol=1e-5,
  )
  np.testing.assert_array_equal(
    best[:, :found], np.take_along_axis(expected_best, exact_order, axis=1)
  )


def test_query_expansion_on_shortlist(data):
  database, valid, query, query_valid = data
  index = region_index.build(database, valid, kind='flat')
  shortlist, n_qe = 40, 5
  scores, ranks, _ = index_search.search(
    index,
    database,
    valid,
    query,
    query_valid,
    k_regions=int(valid.sum()),
    shortlist=shortlist,
    qe=True,
    n_qe=n_qe,
  )
  expected, expected_best = reference_similarity(
    query, query_valid, database, valid
  )
  candidates = np.argsort(-expected, axis=1, kind='stable')[:, :shortlist]
  np.testing.assert_array_equal(
    np.sort(ranks, axis=1), np.sort(candidates, axis=1)
  )
  expanded = reference_qe(
    database, valid, expected, expected_best, candidates, n_qe
  )
  np.testing.assert_allclose(
    scores, np.take_along_axis(expanded, ranks, 1), atol=1e-5
  )
  assert np.all(np.diff(scores, axis=1) <= 0)


def test_float16_store_is_rescored_exactly_in_float32(data):
  database, valid, query, query_valid = data
  stored = database.astype(np.float16)
  index = region_index.build(stored, valid, kind='flat')
  scores, ranks, _ = index_search.search(
    index,
    stored,
    valid,
    query,
    query_valid,
    k_regions=int(valid.sum()),
    shortlist=NUM_IMAGES,
  )
  expected, _ = reference_similarity(query, query_valid, stored, valid)
  found = NUM_IMAGES - 1
  np.testing.assert_array_equal(
    ranks[:, :found], np.argsort(-expected, axis=1, kind='stable')[:, :found]
  )
  np.testing.assert_allclose(
    scores[:, :found], np.sort(expected, axis=1)[:, ::-1][:, :found], atol=1e-5
  )


@pytest.mark.parametrize('rescore', [True, False])
def test_shortlist_from_exact_or_index_scores_of_the_hits(data, rescore):
  database, valid, query, query_valid = data
  options = {'nlist': 4, 'm': 4, 'nbits': 4, 'nprobe': 4, 'train_size': 4000}
  index = region_index.build(database, valid, kind='ivfpq', options=options)
  k_regions, shortlist = 12, 15
  _, ranks, _ = index_search.search(
    index,
    database,
    valid,
    query,
    query_valid,
    k_regions=k_regions,
    shortlist=shortlist,
    rescore=rescore,
  )
  # Reference: the same hits, scored in float64 against every valid query
  # region (or by the crude PQ codes, for the retrieving region only), per-
  # image max, best `shortlist` images.
  for q in range(NUM_QUERIES):
    vectors = query[q][query_valid[q]]
    approximate, labels = index.index.search(
      vectors, k_regions, params=faiss.SearchParametersIVF(nprobe=4)
    )
    assert np.all(labels >= 0)
    images = index.image_ids[labels]
    retrieved = database[images, index.region_ids[labels]].astype(np.float64)
    exact = np.einsum('hkd,rd->hkr', retrieved, vectors.astype(np.float64)).max(
      axis=-1
    )
    hit_scores = exact if rescore else approximate
    best = {}
    for image, score in zip(images.ravel(), hit_scores.ravel()):
      best[image] = max(best.get(image, -np.inf), score)
    threshold = sorted(best.values(), reverse=True)[shortlist - 1]
    returned = set(ranks[q][ranks[q] >= 0])
    assert len(returned) == shortlist
    # Ties at the threshold (crude PQ codes give many) may go either way.
    assert {i for i in best if best[i] > threshold + 1e-6} <= returned, q
    assert all(best[i] >= threshold - 1e-6 for i in returned), q


def test_rescoring_buckets_bound_padding_and_shapes():
  sizes = np.arange(1, 20001)
  buckets = np.array([index_search._bucket(int(n)) for n in sizes])
  assert np.all(buckets >= sizes) and np.all(np.diff(buckets) >= 0)
  assert np.all((buckets - sizes)[sizes > 256] <= 0.25 * sizes[sizes > 256])
  assert len(set(buckets.tolist())) <= 30  # compilations of _hit_scores


def test_bad_inputs_raise(data):
  database, valid, query, query_valid = data
  index = region_index.build(database, valid, kind='flat')
  with pytest.raises(ValueError, match='query D'):
    index_search.search(index, database, valid, query[..., :16], query_valid)
  with pytest.raises(ValueError, match='not the indexed'):
    index_search.search(index, database[:-1], valid[:-1], query, query_valid)
  with pytest.raises(ValueError, match='query_valid'):
    index_search.search(index, database, valid, query, query_valid[:, :2])
  with pytest.raises(ValueError, match='k_regions'):
    index_search.search(index, database, valid, query, query_valid, k_regions=0)


def test_search_parameters_follow_the_index_options(data):
  database, valid, _, _ = data
  assert (
    index_search.search_parameters(
      region_index.build(database, valid, kind='flat')
    )
    is None
  )
  hnsw = region_index.build(
    database,
    valid,
    kind='hnsw',
    options={'hnsw_m': 8, 'ef_construction': 40, 'ef_search': 77},
  )
  assert index_search.search_parameters(hnsw).efSearch == 77
  assert index_search.search_parameters(hnsw, ef_search=5).efSearch == 5
  options = {'nlist': 4, 'm': 4, 'nbits': 4, 'nprobe': 3, 'train_size': 4000}
  ivfpq = region_index.build(database, valid, kind='ivfpq', options=options)
  assert index_search.search_parameters(ivfpq).nprobe == 3
  assert index_search.search_parameters(ivfpq, nprobe=2).nprobe == 2
