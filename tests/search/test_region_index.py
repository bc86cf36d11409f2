"""Tests for regagg_jax.search.region_index: the FAISS kinds, what they
index, their files (searches: test_index_search.py)."""

import json
import os

import faiss
import numpy as np
import pytest

from regagg_jax.search import region_index
from regagg_jax.search import index_search
from tests.search.conftest import DIM
from tests.search.conftest import NUM_IMAGES
from tests.search.conftest import reference_similarity

APPROXIMATE = {
  'ivfpq': {'nlist': 8, 'm': 16, 'nbits': 6, 'nprobe': 8, 'train_size': 4000},
  'hnsw': {'hnsw_m': 16, 'ef_construction': 80, 'ef_search': 200},
}


def recall_at(ranks, reference, k):
  exact = np.argsort(-reference, axis=1, kind='stable')[:, :k]
  return np.mean([len(set(e) & set(r[:k])) / k for e, r in zip(exact, ranks)])


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
  database, valid, _, _ = data
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
