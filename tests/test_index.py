"""Tests for regagg_jax.index: store and fit round trips, atomic writes."""

import csv
import json
import os

import numpy as np
import pytest

from regagg_jax import index
from regagg_jax import pca


def _random_params(rng, d_in, dim):
  return pca.PCAParams(mean=rng.normal(size=d_in).astype(np.float32),
                       components=rng.normal(size=(d_in, dim)).astype(np.float32),
                       scale=rng.uniform(size=dim).astype(np.float32))


def _random_store(rng, num_images=7, num_regions=4, dim=6, reduction=True):
  valid = rng.uniform(size=(num_images, num_regions)) > 0.3
  descriptors = rng.normal(size=(num_images, num_regions, dim))
  descriptors = np.where(valid[..., None], descriptors, 0).astype(np.float32)
  return index.Store(
      descriptors=descriptors, valid=valid,
      masks=rng.uniform(size=(num_images, num_regions, 5, 11)) > 0.5,
      grid=rng.integers(1, 6, size=(num_images, 2)).astype(np.int32),
      image_paths=tuple(f'/images/{i}.jpg' for i in range(num_images)),
      reduction=_random_params(rng, 8, 3) if reduction else None,
      metadata={'config_hash': 'abc', 'skipped': [['/x.jpg', 'corrupt']],
                'config': {'pooling': {'method': 'o2'}}})


def _assert_stores_equal(actual, expected):
  for name in ('descriptors', 'valid', 'masks', 'grid'):
    got, want = getattr(actual, name), getattr(expected, name)
    assert got.dtype == want.dtype, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert actual.image_paths == expected.image_paths
  assert actual.metadata == expected.metadata
  assert (actual.reduction is None) == (expected.reduction is None)
  if expected.reduction is not None:
    for got, want in zip(actual.reduction, expected.reduction):
      np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('shard_size', [1, 3, 1000])
@pytest.mark.parametrize('reduction', [True, False])
def test_store_round_trip_is_identical(tmp_path, shard_size, reduction):
  store = _random_store(np.random.default_rng(0), reduction=reduction)
  index.save_store(tmp_path / 'store', store, shard_size=shard_size)
  loaded = index.load_store(tmp_path / 'store')
  _assert_stores_equal(loaded, store)
  shards = sorted(f for f in os.listdir(tmp_path / 'store')
                  if f.startswith('shard_'))
  assert len(shards) == -(-7 // shard_size)


def test_empty_store_round_trip(tmp_path):
  store = _random_store(np.random.default_rng(1), num_images=0)
  index.save_store(tmp_path / 'store', store)
  loaded = index.load_store(tmp_path / 'store')
  assert loaded.descriptors.shape == (0, 4, 6)
  assert loaded.image_paths == ()


def test_save_replaces_existing_store_and_leaves_no_temporaries(tmp_path):
  rng = np.random.default_rng(2)
  index.save_store(tmp_path / 'store', _random_store(rng, num_images=5))
  second = _random_store(rng, num_images=3)
  index.save_store(tmp_path / 'store', second)
  _assert_stores_equal(index.load_store(tmp_path / 'store'), second)
  assert os.listdir(tmp_path) == ['store']


def test_failed_write_keeps_previous_store(tmp_path):
  rng = np.random.default_rng(3)
  first = _random_store(rng)
  index.save_store(tmp_path / 'store', first)
  bad = first._replace(metadata={'not_json': object()})
  with pytest.raises(TypeError):
    index.save_store(tmp_path / 'store', bad)
  _assert_stores_equal(index.load_store(tmp_path / 'store'), first)
  assert os.listdir(tmp_path) == ['store']


def test_inconsistent_store_is_refused(tmp_path):
  store = _random_store(np.random.default_rng(4))
  with pytest.raises(ValueError, match='paths'):
    index.save_store(tmp_path / 's', store._replace(image_paths=('a',)))
  with pytest.raises(ValueError, match='descriptors'):
    index.save_store(tmp_path / 's',
                     store._replace(descriptors=store.descriptors[:2]))
  with pytest.raises(TypeError, match='bool'):
    index.save_store(tmp_path / 's', store._replace(valid=store.valid * 1))


def test_wrong_format_version_and_missing_directory(tmp_path):
  index.save_store(tmp_path / 'store', _random_store(np.random.default_rng(5)))
  meta_file = tmp_path / 'store' / 'metadata.json'
  metadata = json.loads(meta_file.read_text())
  metadata['format_version'] = index.FORMAT_VERSION + 1
  meta_file.write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match='format version'):
    index.load_store(tmp_path / 'store')
  with pytest.raises(FileNotFoundError, match='metadata.json'):
    index.load_store(tmp_path / 'nothing')


@pytest.mark.parametrize('reduction', [True, False])
def test_fit_round_trip_is_identical(tmp_path, reduction):
  rng = np.random.default_rng(6)
  fit = index.Fit(reduction=_random_params(rng, 8, 3) if reduction else None,
                  whitening=_random_params(rng, 6, 2),
                  metadata={'config_hash': 'abc', 'fitted_on': 'db'})
  index.save_fit(tmp_path / 'fit', fit)
  loaded = index.load_fit(tmp_path / 'fit')
  assert loaded.metadata == fit.metadata
  for got, want in zip(loaded.whitening, fit.whitening):
    assert np.asarray(got).dtype == np.float32
    np.testing.assert_array_equal(got, want)
  assert (loaded.reduction is None) == (not reduction)
  if reduction:
    for got, want in zip(loaded.reduction, fit.reduction):
      np.testing.assert_array_equal(got, want)


def test_hashes_are_stable_and_sensitive():
  sections = {'pooling': {'method': 'o2', 'k_prime': 128}}
  assert index.hash_config(sections) == index.hash_config(
      {'pooling': {'k_prime': 128, 'method': 'o2'}})
  assert index.hash_config(sections) != index.hash_config(
      {'pooling': {'method': 'o2', 'k_prime': 64}})
  rng = np.random.default_rng(7)
  params = _random_params(rng, 4, 2)
  assert index.hash_params(params) == index.hash_params(
      pca.PCAParams(*[np.array(a) for a in params]))
  changed = params._replace(scale=params.scale + 1)
  assert index.hash_params(params) != index.hash_params(changed)
  assert index.hash_params(None) == 'none'


def test_write_results_json_and_csv(tmp_path):
  rng = np.random.default_rng(8)
  database = _random_store(rng, num_images=3, num_regions=2)
  masks = np.zeros((3, 2, 5, 11), bool)
  masks[1, 0, 1:3, 2:5] = True  # cells rows 1-2, cols 2-4
  masks[2, 1, 4, 10] = True  # the last cell, clipped to the image size
  database = database._replace(
      masks=masks, grid=np.array([[5, 11]] * 3, np.int32),
      metadata=dict(database.metadata, sizes=[[70, 170]] * 3))
  queries = database._replace(image_paths=('q0.jpg',))
  scores = np.array([[0.1, 0.9, 0.5]], np.float32)
  ranks = np.array([[1, 2, 0]])
  best = np.array([[1, 0, 1]], np.int32)
  index.write_results(str(tmp_path / 'out'), scores, ranks, best, queries,
                      database, top_k=2)
  entries = json.loads((tmp_path / 'out.json').read_text())
  assert entries == [{'query': 'q0.jpg', 'results': [
      {'rank': 0, 'image': '/images/1.jpg', 'score': pytest.approx(0.9),
       'region': 0, 'region_box': [32, 16, 80, 48]},
      {'rank': 1, 'image': '/images/2.jpg', 'score': pytest.approx(0.5),
       'region': 1, 'region_box': [160, 64, 170, 70]}]}]
  with open(tmp_path / 'out.csv', newline='') as stream:
    rows = list(csv.reader(stream))
  assert rows[0] == ['query', 'rank', 'image', 'score', 'region', 'x1', 'y1',
                     'x2', 'y2']
  assert rows[1] == ['q0.jpg', '0', '/images/1.jpg', '0.900000', '0', '32',
                     '16', '80', '48']
  assert len(rows) == 3
