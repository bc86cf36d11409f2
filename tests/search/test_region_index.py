"""Tests of region_index and region_search against float64 eq. (7) / (8)."""

import json
import os

import faiss
import numpy as np
import pytest

from regagg_jax.search import region_index
from regagg_jax.search import index_search

NUM_IMAGES, NUM_REGIONS, DIM, NUM_QUERIES = 300, 6, 32, 8
APPROXIMATE = {
  'ivfpq': {'nlist': 8, 'm': 16, 'nbits': 6, 'nprobe': 8, 'train_size': 4000},
  'hnsw': {'hnsw_m': 16, 'ef_construction': 80, 'ef_search': 200},
}


def normalize(x):
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.where(norm > 0, norm, 1.0)


@pytest.fixture(scope='module')
def data():
  """Clustered database (some invalid regions, image 7 has none) and queries."""
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(20, DIM))
  database = normalize(
    centers[rng.integers(0, 20, (NUM_IMAGES, NUM_REGIONS))]
    + 0.6 * rng.normal(size=(NUM_IMAGES, NUM_REGIONS, DIM))
  )
  valid = rng.random((NUM_IMAGES, NUM_REGIONS)) < 0.85
  valid[:, -1] = True
  valid[7] = False
  database = np.where(valid[..., None], database, 0.0).astype(np.float32)
  query = normalize(
    database[10 : 10 + NUM_QUERIES]
    + 0.2 * rng.normal(size=(NUM_QUERIES, NUM_REGIONS, DIM))
  )
  query[-2:] = normalize(rng.normal(size=(2, NUM_REGIONS, DIM)))  # fresh
  query_valid = rng.random((NUM_QUERIES, NUM_REGIONS)) < 0.8
  query_valid[:, 0] = True
  return database, valid, query.astype(np.float32), query_valid


def reference_similarity(query, query_valid, database, valid):
  """float64 eq. (7): scores (Q, N) and best database region (Q, N)."""
  pairs = np.einsum(
    'qad,nbd->qnab', query.astype(np.float64), database.astype(np.float64)
  )
  pairs[~query_valid[:, None, :, None] | ~valid[None, :, None, :]] = -np.inf
  per_target = pairs.max(axis=2)
  return per_target.max(axis=-1), per_target.argmax(axis=-1)


def reference_qe(database, valid, scores, best, candidates, n_qe):
  """float64 eq. (8) over each query's candidate images: (Q, N) scores."""
  expanded = np.full((len(candidates), NUM_IMAGES), -np.inf)
  for q, rows in enumerate(candidates):
    top = rows[np.argsort(-scores[q, rows], kind='stable')[:n_qe]]
    average = normalize(database[top, best[q, top]].astype(np.float64).sum(0))
    region_scores = np.where(valid[rows], database[rows] @ average, -np.inf)
    expanded[q, rows] = region_scores.max(axis=1)
  return expanded


def recall_at(ranks, reference, k):
  exact = np.argsort(-reference, axis=1, kind='stable')[:, :k]
  return np.mean([len(set(e) & set(r[:k])) / k for e, r in zip(exact, ranks)])


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


@pytest.mark.parametrize('kind', sorted(APPROXIMATE))
def test_approximate_kinds_recall(data, kind):
  database, valid, _, _ = data
  index = region_index.build(
    database, valid, kind=kind, options=APPROXIMATE[kind]
  )
  check_recall_and_exact_scores(index, data)


def check_recall_and_exact_scores(index, data):
  """Recall@10 >= 0.9, and every returned score is eq. (7) (exact re-rank)."""
  database, valid, query, query_valid = data
  scores, ranks, _ = index_search.search(
    index, database, valid, query, query_valid, k_regions=200, shortlist=60
  )
  expected, _ = reference_similarity(query, query_valid, database, valid)
  assert recall_at(ranks, expected, 10) >= 0.9
  finite = ranks >= 0
  np.testing.assert_allclose(
    scores[finite],
    np.take_along_axis(expected, np.maximum(ranks, 0), axis=1)[finite],
    atol=1e-5,
  )
  return ranks


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


@pytest.mark.parametrize('kind', ['flat'] + sorted(APPROXIMATE))
def test_invalid_regions_never_indexed_or_returned(data, kind):
  database, valid, query, query_valid = data
  index = region_index.build(
    database, valid, kind=kind, options=APPROXIMATE.get(kind)
  )
  assert index.index.ntotal == valid.sum() == index.metadata['num_vectors']
  assert np.all(valid[index.image_ids, index.region_ids])
  _, ranks, best = index_search.search(
    index,
    database,
    valid,
    query,
    query_valid,
    k_regions=400,
    shortlist=NUM_IMAGES,
  )
  assert 7 not in ranks
  returned = ranks >= 0
  assert np.all(valid[ranks[returned], best[returned]])


def test_save_load_round_trip_and_mismatches(data, tmp_path):
  database, valid, query, query_valid = data
  built = region_index.build(
    database,
    valid,
    kind='ivfpq',
    options=APPROXIMATE['ivfpq'],
    metadata={'whitening_hash': 'abc', 'store_hash': 'def'},
  )
  path = os.fspath(tmp_path / 'regions')
  region_index.save(path, built)
  region_index.save(path, built)  # replaces
  loaded = region_index.load(
    path,
    expected={
      'D': DIM,
      'num_images': NUM_IMAGES,
      'whitening_hash': 'abc',
      'store_hash': 'def',
    },
  )
  assert loaded.metadata == built.metadata
  np.testing.assert_array_equal(loaded.image_ids, built.image_ids)
  np.testing.assert_array_equal(loaded.region_ids, built.region_ids)
  before = index_search.search(
    built, database, valid, query, query_valid, k_regions=20, shortlist=30
  )
  after = index_search.search(
    loaded, database, valid, query, query_valid, k_regions=20, shortlist=30
  )
  for one, two in zip(before, after):
    np.testing.assert_array_equal(one, two)
  for field, value in [
    ('num_images', NUM_IMAGES + 1),
    ('D', 64),
    ('whitening_hash', 'other'),
    ('store_hash', 'x'),
  ]:
    with pytest.raises(ValueError, match=f'metadata.json.*{field}'):
      region_index.load(path, expected={field: value})
  with pytest.raises(FileNotFoundError, match='metadata.json'):
    region_index.load(os.fspath(tmp_path / 'missing'))
  with open(os.path.join(path, 'metadata.json')) as stream:
    metadata = json.load(stream)
  metadata['num_vectors'] += 1
  with open(os.path.join(path, 'metadata.json'), 'w') as stream:
    json.dump(metadata, stream)
  with pytest.raises(ValueError, match='ids.npz'):
    region_index.load(path)


def test_bad_inputs_raise(data):
  database, valid, query, query_valid = data
  with pytest.raises(ValueError, match='images, regions, D'):
    region_index.build(database[0], valid[0])
  with pytest.raises(ValueError, match='descriptors_valid'):
    region_index.build(database, valid[:-1])
  with pytest.raises(TypeError, match='float'):
    region_index.build(database.astype(np.int32), valid)
  with pytest.raises(TypeError, match='bool'):
    region_index.build(database, valid.astype(np.int32))
  with pytest.raises(ValueError, match='kind'):
    region_index.build(database, valid, kind='lsh')
  with pytest.raises(ValueError, match='unknown ivfpq options'):
    region_index.build(database, valid, kind='ivfpq', options={'nlists': 8})
  with pytest.raises(ValueError, match='must divide'):
    region_index.build(database, valid, kind='ivfpq', options={'m': 5})
  with pytest.raises(ValueError, match='no valid region'):
    region_index.build(database, np.zeros_like(valid))
  index = region_index.build(database, valid, kind='flat')
  with pytest.raises(ValueError, match='query D'):
    index_search.search(index, database, valid, query[..., :16], query_valid)
  with pytest.raises(ValueError, match='not the indexed'):
    index_search.search(index, database[:-1], valid[:-1], query, query_valid)
  with pytest.raises(ValueError, match='query_valid'):
    index_search.search(index, database, valid, query, query_valid[:, :2])
  with pytest.raises(ValueError, match='k_regions'):
    index_search.search(index, database, valid, query, query_valid, k_regions=0)


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


def test_fast_scan_ivfpq_recall_and_round_trip(data, tmp_path):
  database, valid, query, query_valid = data
  options = {
    'nlist': 8,
    'm': 16,
    'nbits': 4,
    'fast_scan': True,
    'nprobe': 8,
    'train_size': 4000,
  }
  index = region_index.build(database, valid, kind='ivfpq', options=options)
  assert isinstance(index.index, faiss.IndexIVFPQFastScan)
  ranks = check_recall_and_exact_scores(index, data)
  region_index.save(tmp_path / 'fast', index)
  loaded = region_index.load(tmp_path / 'fast')
  _, loaded_ranks, _ = index_search.search(
    loaded, database, valid, query, query_valid, k_regions=200, shortlist=60
  )
  np.testing.assert_array_equal(loaded_ranks, ranks)
  assert index.index.nlist == index.metadata['options']['nlist'] == 8
  automatic = region_index.build(
    database, valid, kind='ivfpq', options=dict(options, nlist=0)
  )
  assert automatic.metadata['options']['nlist'] == 64  # sqrt(V) ~ 40, >= 64
  with pytest.raises(ValueError, match='fast_scan needs nbits=4'):
    region_index.build(
      database, valid, kind='ivfpq', options=dict(options, nbits=8)
    )


def test_rescoring_buckets_bound_padding_and_shapes():
  sizes = np.arange(1, 20001)
  buckets = np.array([index_search._bucket(int(n)) for n in sizes])
  assert np.all(buckets >= sizes) and np.all(np.diff(buckets) >= 0)
  assert np.all((buckets - sizes)[sizes > 256] <= 0.25 * sizes[sizes > 256])
  assert len(set(buckets.tolist())) <= 30  # compilations of _hit_scores
