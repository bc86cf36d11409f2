"""Tests of regagg_jax.encoder outside pipeline.encode (tested there)."""

import ctypes
import glob
import os

import numpy as np
import pytest
import scipy

from regagg_jax import encoder


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
