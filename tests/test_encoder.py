"""Tests of regagg_jax.encoder outside pipeline.encode (tested there)."""

import ctypes
import glob
import os

import jax
import numpy as np
import pytest
import scipy

from regagg_jax import encoder
from regagg_jax import vgg19

_OPTIONS = {'gem_power': 3.0, 'offdiag_scale': 1.0, 'rmac_levels': 3}


def _scipy_openblas():
  pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir,
                         'scipy.libs', 'libscipy_openblas*.so')
  libraries = glob.glob(pattern)
  if not libraries:
    pytest.skip(f'no scipy OpenBLAS at {pattern}')
  return ctypes.CDLL(libraries[0])


def test_limit_lapack_threads_caps_scipy_openblas():
  library = _scipy_openblas()
  before = library.scipy_openblas_get_num_threads()
  try:
    encoder.limit_lapack_threads(1)
    assert library.scipy_openblas_get_num_threads() == 1
    encoder.limit_lapack_threads(2)
    assert library.scipy_openblas_get_num_threads() == 2
  finally:
    library.scipy_openblas_set_num_threads(before)


def test_limit_lapack_threads_rejects_zero():
  with pytest.raises(ValueError, match='num_threads'):
    encoder.limit_lapack_threads(0)


def test_encode_methods_takes_explicit_arguments(sample_paths):
  """No config: global methods need no region_options; M = 1, unit norm."""
  variables = vgg19.init_params(jax.random.PRNGKey(0),
                                widths=(4, 4, 8, 8, 16))
  stores = encoder.encode_methods(
      variables, sample_paths[:3], ('gem', 'mac'), pooling_options=_OPTIONS,
      k_prime=6, max_size=64, batch_size=2)
  for store in stores.values():
    assert store.descriptors.shape == (3, 1, 16)
    assert store.descriptors.dtype == np.float32 and store.valid.all()
    np.testing.assert_allclose(np.linalg.norm(store.descriptors, axis=-1), 1,
                               rtol=1e-5)
    assert store.metadata['rows'] == [0, 1, 2] and store.reduction is None
    assert store.metadata['apply_exif'] and 'config_hash' not in store.metadata
  with pytest.raises(ValueError, match='region_options'):
    encoder.encode_methods(variables, sample_paths[:1], ('o1',),
                           pooling_options=_OPTIONS, k_prime=6)
