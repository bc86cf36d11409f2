"""Tests for regagg_jax.experiment.fitting: PCA-whitening (eq. 6) fitted on
a synthetic store's valid regions, D capped by the vectors available, and
the rows U^1 (eq. 4) is fitted on."""

import numpy as np

from regagg_jax.aggregation import pca
from regagg_jax.experiment import fitting
from regagg_jax.experiment import settings
from tests.experiment.synthetic import config_with
from tests.experiment.synthetic import synthetic_store


def _capped(**changes):
  return config_with(
    pca__dim=10, pca__min_vectors_per_dim=3, pca__min_whitened_dim=1, **changes
  )


def test_fit_uses_valid_regions_and_caps_dim():
  rng = np.random.default_rng(1)
  config = _capped()
  store = synthetic_store(config, rng, num_images=9, dim=12)
  fitted = fitting.fit(config, store, fitted_on='db')
  assert fitted.metadata['num_vectors'] == int(store.valid.sum())
  assert fitted.metadata['dim'] == min(10, store.valid.sum() // 3)
  assert fitted.metadata['fitted_on'] == 'db'
  expected = pca.fit(
    store.descriptors.reshape(-1, 12),
    fitted.metadata['dim'],
    whiten=True,
    mask=store.valid.reshape(-1),
  )
  for got, want in zip(fitted.whitening, expected):
    np.testing.assert_array_equal(got, want)
  assert (
    fitted.metadata['whiten'] and 'capped from 10' in fitted.metadata['note']
  )
  whole = fitting.fit(
    _capped(pooling__regional=False),
    store._replace(
      metadata=dict(
        store.metadata,
        config_hash=settings.store_hash(config_with(pooling__regional=False)),
      )
    ),
  )
  assert whole.metadata['num_vectors'] == 9  # R_M of every image only
  assert whole.metadata['dim'] == 3


def test_fit_on_too_few_vectors_keeps_pca_without_whitening():
  rng = np.random.default_rng(7)
  config = config_with(pca__dim=10)  # default margin: 16 vectors per dimension
  store = synthetic_store(config, rng, num_images=9, dim=12)
  fitted = fitting.fit(config, store)
  num_vectors = int(store.valid.sum())
  assert not fitted.metadata['whiten']
  assert fitted.metadata['dim'] == min(10, num_vectors - 1)
  assert 'too few to whiten' in fitted.metadata['note']
  np.testing.assert_array_equal(fitted.whitening.scale, 1)
  expected = pca.fit(
    store.descriptors.reshape(-1, 12),
    fitted.metadata['dim'],
    mask=store.valid.reshape(-1),
  )
  for got, want in zip(fitted.whitening, expected):
    np.testing.assert_array_equal(got, want)


def test_sample_rows_spread_over_the_set():
  assert fitting.sample_rows(9, 3) == [0, 4, 8]
  assert fitting.sample_rows(5, 0) == [0, 1, 2, 3, 4]  # 0: all
  assert fitting.sample_rows(5, 7) == [0, 1, 2, 3, 4]
