"""Tests for regagg_jax.experiment.settings: the hashes follow what they
depend on, stores and fits of other configs are refused."""

import numpy as np
import pytest

from regagg_jax.aggregation import pca
from regagg_jax.experiment import fitting
from regagg_jax.experiment import retrieval
from regagg_jax.experiment import settings
from tests.experiment.synthetic import config_with
from tests.experiment.synthetic import synthetic_store


def test_store_and_fit_from_other_configs_are_refused():
  rng = np.random.default_rng(2)
  config = config_with(pca__dim=4)
  database = synthetic_store(config, rng)
  queries = synthetic_store(config, rng, num_images=2)
  fitted = fitting.fit(config, database)
  retrieval.search(config, queries, database, fitted)  # compatible: fine

  other = config_with(pca__dim=4, pooling__k_prime=5)
  with pytest.raises(ValueError, match=r'encoded with config .*k_prime'):
    retrieval.search(other, queries, database, fitted)
  with pytest.raises(ValueError, match='fitted with other pca settings'):
    retrieval.search(config_with(pca__dim=3), queries, database, fitted)
  foreign = fitted._replace(
    metadata=dict(fitted.metadata, config_hash='0' * 16)
  )
  with pytest.raises(
    ValueError, match='PCA-whitening .* fitted on descriptors'
  ):
    retrieval.search(config, queries, database, foreign)
  reduced = database._replace(
    reduction=pca.PCAParams(
      np.zeros(3, np.float32),
      np.eye(3, 2, dtype=np.float32),
      np.ones(2, np.float32),
    ),
    metadata=dict(database.metadata, reduction_hash='1' * 16),
  )
  with pytest.raises(ValueError, match='another U\\^1'):
    retrieval.search(config, queries, reduced, fitted)
  with pytest.raises(ValueError, match='queries were encoded with another'):
    retrieval.search(config, queries, reduced, fitting.fit(config, reduced))


def test_hashes_follow_what_they_depend_on():
  base = config_with()
  assert settings.store_hash(base) == settings.store_hash(
    config_with(features__batch_size=7, pooling__regional=False, pca__dim=3)
  )
  assert settings.store_hash(base) != settings.store_hash(
    config_with(pooling__k_prime=5)
  )
  assert settings.store_hash(base) != settings.store_hash(
    config_with(regions__n_max=10)
  )
  # Global baselines do not depend on the region proposal.
  assert settings.store_hash(config_with(pooling__method='gem')) == (
    settings.store_hash(config_with(pooling__method='gem', regions__n_max=10))
  )
  assert settings.fit_hash(base) != settings.fit_hash(config_with(pca__dim=3))
  assert settings.fit_hash(base) != settings.fit_hash(
    config_with(pooling__regional=False)
  )


def test_use_regions_keeps_r_m_only_when_whole():
  valid = np.array([[True, False, True], [False, True, False]])
  np.testing.assert_array_equal(settings.use_regions(valid, whole=False), valid)
  np.testing.assert_array_equal(
    settings.use_regions(valid, whole=True),
    [[False, False, True], [False, False, False]],
  )


def test_store_header_names_inputs_u1_and_whitening():
  config = config_with()
  header = settings.store_header(
    config, ['a.jpg'], reduction=None, whitening=None, apply_exif=False
  )
  assert header['config_hash'] == settings.store_hash(config)
  assert header['config'] == settings.store_sections(config)
  assert header['reduction_hash'] == header['whitening_hash'] == 'none'
  assert header['apply_exif'] is False
  assert (
    header['inputs_hash']
    != settings.store_header(
      config, ['b.jpg'], reduction=None, whitening=None, apply_exif=False
    )['inputs_hash']
  )
