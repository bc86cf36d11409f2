"""Fixtures of the features tests."""

import pytest

from regagg_jax.features import weight_sources


@pytest.fixture(scope='module')
def real_h5(real_params):
  """The verified Keras h5 that `real_params` was converted from."""
  del real_params  # ensures the h5 has been obtained
  return weight_sources.obtain_h5()
