"""Tests of regagg_jax.encoding.batch_encoder: the fused batch encoder,
compilation counting, LAPACK threads (file_encoder and method_encoder run it
over image files; their tests share these jits through conftest's options).

Speed: compiling the JAX detector dominates; the fused 'o1' / 'o2' batches
(4 images of 64 x 48 px, padded to 64 x 64) compile once each and are
reused.
"""

import ctypes
import glob
import os

import jax
import numpy as np
import pytest
import scipy

from regagg_jax.aggregation import pca
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import resources
from regagg_jax.features import reading
from tests.encoding.conftest import JAX_REGIONS
from tests.encoding.conftest import OPTIONS
from tests.encoding.conftest import TOLERANCE


@pytest.fixture(scope='module')
def batch(paths):
  """Three 64 x 48 images padded to a batch of 4 (one empty slot)."""
  pictures = [reading.load(p, max_size=64) for p in paths[:3]]
  return reading.make_batch([0, 1, 2], pictures, 4)


def _encode(variables, batch, method, reduction=None, whitening=None, **kwargs):
  outputs = batch_encoder.encode_batch(
    variables,
    batch.rgb,
    batch.sizes,
    batch.cells,
    reduction,
    whitening,
    method=method,
    region_options=JAX_REGIONS,
    pooling_options=OPTIONS,
    **kwargs,
  )
  return [np.asarray(a) for a in outputs]


@pytest.fixture(scope='module')
def fused(variables, batch, reduction):
  return {
    m: _encode(variables, batch, m, reduction if m == 'o2' else None)
    for m in ('o1', 'o2', 'crow')
  }


@pytest.mark.parametrize('method', ['o1', 'o2', 'crow'])
def test_fused_batch_equals_staged(variables, batch, reduction, fused, method):
  descriptors, valid, masks = fused[method]
  staged = _encode(
    variables, batch, method, reduction if method == 'o2' else None, staged=True
  )
  regions = 4 if method != 'crow' else 1
  dim = {'o1': 16, 'crow': 16, 'o2': 10}[method]  # K, K'(K'+1)/2
  assert descriptors.shape == (4, regions, dim)
  assert descriptors.dtype == np.float32
  assert valid.shape == (4, regions) and masks.shape == (4, regions, 4, 4)
  np.testing.assert_array_equal(valid, staged[1])
  np.testing.assert_array_equal(masks, staged[2])
  np.testing.assert_allclose(descriptors, staged[0], **TOLERANCE)
  assert valid[:3, -1].all() and not valid[3].any()  # slot 3 is padding
  assert not descriptors[3].any() and not masks[3].any()
  np.testing.assert_allclose(
    np.linalg.norm(descriptors[valid], axis=-1), 1, rtol=1e-5
  )
  if method != 'crow':
    assert valid[:3, :-1].any()  # some cluster regions survive


def test_whitening_inside_equals_pca_apply_afterwards(variables, batch, fused):
  """eq. (6) in the fused jit == a float64 numpy whitening afterwards."""
  descriptors, valid, _ = fused['crow']
  rng = np.random.default_rng(0)
  whitening = pca.fit(
    rng.normal(size=(64, 16)).astype(np.float32), 8, whiten=True
  )
  whitened, whitened_valid, _ = _encode(
    variables, batch, 'crow', whitening=whitening
  )
  np.testing.assert_array_equal(whitened_valid, valid)
  mean, components, scale = (np.asarray(a, np.float64) for a in whitening)
  expected = (descriptors.astype(np.float64) - mean) @ components * scale
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  expected = np.where(valid[..., None], expected, 0.0)
  assert whitened.shape == (4, 1, 8)
  np.testing.assert_allclose(whitened, expected, rtol=1e-4, atol=1e-5)


def test_compilations_count_one_per_bucket(variables):
  """Same bucket twice: one compilation; a new bucket: one more; the staged
  path compiles its forward and its pooling. XLA's own compile events for
  the encoder's jits agree with the count."""
  compiled = []

  def listen(event, duration, **kwargs):
    del duration
    name = str(kwargs.get('fun_name'))
    if event == '/jax/core/compile/backend_compile_duration' and any(
      f'({n})' in name
      for n in ('_encode_chain', '_compute_maps', '_pool_batch')
    ):
      compiled.append(name)

  def run(height, width, **kwargs):
    picture = np.full((height, width, 3), 90, np.uint8)
    part = reading.make_batch([0], [picture], 3)  # batch size 3: this test's
    batch_encoder.encode_batch(
      variables,
      part.rgb,
      part.sizes,
      part.cells,
      None,
      None,
      method='spoc',
      pooling_options=OPTIONS,
      **kwargs,
    )[0].block_until_ready()
    return resources.compilations() - start

  start = resources.compilations()
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    assert run(48, 64) == 1
    assert run(60, 50) == 1  # the same 64 x 64 bucket
    assert run(100, 64) == 2  # bucket 128 x 64
    assert run(48, 64, staged=True) == 4
    assert run(40, 40, staged=True) == 4
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert len(compiled) == 4, compiled


def test_bad_arguments_are_refused(variables, batch):
  def call(
    method='o1',
    rgb=batch.rgb,
    cells=batch.cells,
    reduction=None,
    region_options=JAX_REGIONS,
  ):
    batch_encoder.encode_batch(
      variables,
      rgb,
      batch.sizes,
      cells,
      reduction,
      None,
      method=method,
      region_options=region_options,
      pooling_options=OPTIONS,
    )

  with pytest.raises(ValueError, match='pooling method must be one of'):
    call(method='vlad')
  with pytest.raises(ValueError, match='needs reduction'):
    call(method='o2')
  with pytest.raises(ValueError, match='needs region_options'):
    call(region_options=None)
  with pytest.raises(TypeError, match='rgb must be uint8'):
    call(rgb=batch.rgb.astype(np.float32))
  with pytest.raises(ValueError, match='cells must be bool'):
    call(cells=batch.cells[:, :2])


def _scipy_openblas():
  pattern = os.path.join(
    os.path.dirname(scipy.__file__),
    os.pardir,
    'scipy.libs',
    'libscipy_openblas*.so',
  )
  libraries = glob.glob(pattern)
  if not libraries:
    pytest.skip(f'no scipy OpenBLAS at {pattern}')
  return ctypes.CDLL(libraries[0])


def test_limit_lapack_threads_caps_scipy_openblas():
  library = _scipy_openblas()
  before = library.scipy_openblas_get_num_threads()
  try:
    batch_encoder.limit_lapack_threads(1)
    assert library.scipy_openblas_get_num_threads() == 1
    batch_encoder.limit_lapack_threads(2)
    assert library.scipy_openblas_get_num_threads() == 2
  finally:
    library.scipy_openblas_set_num_threads(before)


def test_limit_lapack_threads_rejects_zero():
  with pytest.raises(ValueError, match='num_threads'):
    batch_encoder.limit_lapack_threads(0)
