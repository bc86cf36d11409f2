"""Tests for regagg_jax.experiment.indexing: the whitened descriptors search
compares, the region index and the region graph built as a config says."""

import ml_collections
import numpy as np
import pytest

from regagg_jax.aggregation import pca
from regagg_jax.experiment import indexing
from regagg_jax.storage import records
from tests.search.test_graph import dense
from tests.search.test_graph import reference_affinity


def make_store(rng, num_images, num_regions=4, dim=5, metadata=None):
  """A records.Store of random descriptors; the last region (the whole
  image) always valid."""
  valid = rng.uniform(size=(num_images, num_regions)) > 0.3
  valid[:, -1] = True  # the whole image
  return records.Store(
    descriptors=rng.normal(size=(num_images, num_regions, dim)).astype(
      np.float32
    ),
    valid=valid,
    masks=np.ones((num_images, num_regions, 2, 2), bool),
    grid=np.array([[2, 2]] * num_images, np.int32),
    image_paths=tuple(f'{i}.jpg' for i in range(num_images)),
    reduction=None,
    metadata=metadata or {},
  )


def _fit(rng, dim=5, out=3):
  """records.Fit whose whitening projects dim -> out dimensions."""
  whitening = pca.PCAParams(
    rng.normal(size=dim).astype(np.float32),
    np.linalg.qr(rng.normal(size=(dim, dim)))[0][:, :out].astype(np.float32),
    rng.uniform(0.5, 2.0, out).astype(np.float32),
  )
  return records.Fit(reduction=None, whitening=whitening, metadata={})


def _reference_whitening(fitted, x, valid):
  """float64 eq. (6): l2(diag(s) U^T (x - mean)), zero where invalid."""
  mean, components, scale = (
    np.asarray(a, np.float64) for a in fitted.whitening
  )
  y = ((x.astype(np.float64) - mean) @ components) * scale
  y /= np.linalg.norm(y, axis=-1, keepdims=True)
  return np.where(valid[..., None], y, 0.0)


def _config(**search):
  return ml_collections.ConfigDict(
    {
      'pooling': {'regional': True},
      'search': dict(
        {
          'index': 'exact',
          'diffusion': {'k': 3, 'gamma': 3.0, 'shard_rows': 7},
        },
        **search,
      ),
    }
  )


def test_whitened_descriptors_apply_eq6_to_a_raw_store():
  rng = np.random.default_rng(0)
  store, fitted = make_store(rng, 4), _fit(rng)
  got = indexing.whitened_descriptors(fitted, store, store.valid)
  assert got.shape == (4, 4, 3)
  np.testing.assert_allclose(
    got,
    _reference_whitening(fitted, store.descriptors, store.valid),
    atol=1e-6,
  )


def test_whitened_store_is_used_as_is_once_its_hash_matches():
  rng = np.random.default_rng(1)
  fitted = _fit(rng, dim=3)
  digest = records.hash_params(fitted.whitening)
  store = make_store(rng, 3, dim=3, metadata={'whitening_hash': digest})
  got = indexing.whitened_descriptors(fitted, store, store.valid)
  want = np.where(store.valid[..., None], store.descriptors, 0.0)
  np.testing.assert_array_equal(got, want)
  stale = store._replace(metadata={'whitening_hash': 'another'})
  with pytest.raises(ValueError, match='whitened with another'):
    indexing.whitened_descriptors(fitted, stale, store.valid)


def test_index_and_graph_expectations_name_store_and_fit():
  rng = np.random.default_rng(2)
  fitted = _fit(rng)
  store = make_store(rng, 5, metadata={'config_hash': 'abc'})
  expected = {
    'whitening_hash': records.hash_params(fitted.whitening),
    'store_hash': 'abc',
  }
  assert indexing.index_expectation(store, fitted) == expected
  assert indexing.graph_expectation(_config(), store, fitted) == dict(
    expected, k=3, gamma=3.0, knn='exact', num_images=5
  )


def test_build_index_holds_the_whitened_valid_regions():
  pytest.importorskip('faiss')
  rng = np.random.default_rng(3)
  fitted = _fit(rng)
  store = make_store(rng, 6, metadata={'config_hash': 'abc'})
  built = indexing.build_index(_config(index='flat'), store, fitted)
  assert built.metadata['store_hash'] == 'abc'
  assert built.metadata['whitening_hash'] == records.hash_params(
    fitted.whitening
  )
  assert built.index.ntotal == int(store.valid.sum())


def test_build_graph_is_the_reciprocal_knn_of_the_whitened_regions(tmp_path):
  rng = np.random.default_rng(4)
  fitted = _fit(rng, dim=10, out=8)  # test_graph's references take D = 8
  store = make_store(rng, 8, dim=10, metadata={'config_hash': 'abc'})
  config = _config()
  region_graph = indexing.build_graph(
    config, store, fitted, str(tmp_path / 'graph')
  )
  whitened = _reference_whitening(fitted, store.descriptors, store.valid)
  np.testing.assert_allclose(
    dense(region_graph.neighbours, region_graph.weights, store.valid.size),
    reference_affinity(whitened, store.valid, 3, 3.0),
    atol=1e-5,
  )
  for key, value in indexing.graph_expectation(config, store, fitted).items():
    assert region_graph.metadata[key] == value
  again = indexing.build_graph(config, store, fitted, str(tmp_path / 'graph'))
  np.testing.assert_array_equal(again.neighbours, region_graph.neighbours)
