"""Tests for regagg_jax.aggregation.method_table: each pooling.method's
per-image function against the float64 references of test_pooling and
test_baselines, the options' defaults and check_method's refusals."""

import numpy as np
import pytest

from configs import default
from regagg_jax.aggregation import method_table
from regagg_jax.aggregation import pooling
from regagg_jax.regions import proposal
from tests.aggregation import test_baselines
from tests.aggregation import test_pooling


@pytest.mark.parametrize('log_method', pooling.LOG_METHODS)
def test_pooling_methods_pass_the_log_method(log_method):
  """method_table.POOLING['o2'] runs eq. (5) with options.log_method."""
  rng = np.random.default_rng(5)
  features = test_pooling.graded_features(
    rng, test_pooling.HEIGHT, test_pooling.WIDTH
  )
  alpha, beta = test_pooling.weights_of(features)
  params = test_pooling.reduction(rng, features, beta, 8)
  masks = test_pooling.random_masks(rng)
  options = method_table.PoolingOptions(log_method=log_method)
  got = method_table.POOLING['o2'].pool(
    features, alpha, beta, None, masks, None, params, options
  )
  expected = pooling.second_order(
    features, masks, alpha, beta, params, log_method=log_method
  )
  np.testing.assert_array_equal(got, expected)
  with pytest.raises(ValueError, match='method must be one of'):
    pooling.compute_log_covariances(
      features[..., :8], masks * alpha, method='svd'
    )


def _image(seed):
  rng = np.random.default_rng(seed)
  features = test_pooling.sparse_features(rng)
  alpha, beta = test_pooling.weights_of(features)
  return rng, features, alpha, beta, test_pooling.random_masks(rng)


@pytest.mark.parametrize('name', ['o1', 'sum'])
def test_first_order_methods_are_eq9_and_eq3(name):
  _, features, alpha, beta, masks = _image(1)
  method = method_table.SUM if name == 'sum' else method_table.POOLING['o1']
  got = method.pool(
    features,
    alpha.astype(np.float32),
    beta.astype(np.float32),
    None,
    masks,
    None,
    None,
    method_table.PoolingOptions(),
  )
  want = test_pooling.reference_first_order(
    features,
    masks,
    beta,
    None if name == 'sum' else alpha,  # eq. 3 / eq. 9
  )
  assert got.shape == (8, test_pooling.CHANNELS)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


@pytest.mark.parametrize('name', ['spoc', 'mac', 'crow', 'rmac', 'gem'])
def test_baseline_methods_pool_the_whole_image_once(name):
  _, features, alpha, beta, masks = _image(2)
  cells = np.ones(features.shape[:2], bool)
  got = method_table.POOLING[name].pool(
    features,
    alpha,
    beta,
    cells,
    masks,
    None,
    None,
    method_table.PoolingOptions(),
  )
  assert got.shape == (1, test_pooling.CHANNELS)
  want = test_baselines.reference_baselines(features)[name]
  np.testing.assert_allclose(np.asarray(got)[0], want, atol=2e-6)


def test_options_pass_gem_power_and_rmac_levels():
  _, features, alpha, beta, masks = _image(3)
  cells = np.ones(features.shape[:2], bool)
  f = features.astype(np.float64)
  got = method_table.POOLING['gem'].pool(
    features,
    alpha,
    beta,
    cells,
    masks,
    None,
    None,
    method_table.PoolingOptions(gem_power=2.0),
  )
  want = np.mean(np.maximum(f, 1e-6) ** 2, (0, 1)) ** 0.5
  np.testing.assert_allclose(
    np.asarray(got)[0], want / np.linalg.norm(want), atol=2e-6
  )
  one_level = method_table.POOLING['rmac'].pool(
    features,
    alpha,
    beta,
    cells,
    masks,
    None,
    None,
    method_table.PoolingOptions(rmac_levels=1),
  )
  want = test_baselines.reference_rmac_regions(f, levels=1).sum(0)
  np.testing.assert_allclose(
    np.asarray(one_level)[0], want / np.linalg.norm(want), atol=2e-6
  )


def test_option_defaults_are_the_default_configs():
  section = default.get_config().pooling
  assert method_table.PoolingOptions() == method_table.PoolingOptions(
    gem_power=section.gem_power,
    offdiag_scale=section.offdiag_scale,
    log_method=section.log_method,
    rmac_levels=section.rmac_levels,
  )
  hash(method_table.PoolingOptions())  # a static jit argument
  assert {'o2', 'o1', 'spoc', 'mac', 'crow', 'rmac', 'gem'} == set(
    method_table.POOLING
  )
  assert [m for m, v in method_table.POOLING.items() if v.reduced] == ['o2']


def test_check_method_refuses_what_a_method_lacks():
  options = proposal.RegionOptions()
  assert (
    method_table.check_method('mac', None, None)
    is (method_table.POOLING['mac'])
  )
  with pytest.raises(ValueError, match='must be one of'):
    method_table.check_method('o3', options, None)
  with pytest.raises(ValueError, match='needs region_options'):
    method_table.check_method('o1', None, None)
  with pytest.raises(ValueError, match='needs reduction'):
    method_table.check_method('o2', options, None)
  assert (
    method_table.check_method('o2', options, None, fitted_here=True)
    is (method_table.POOLING['o2'])
  )
