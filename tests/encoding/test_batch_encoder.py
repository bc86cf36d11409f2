"""Tests of regagg_jax.encoding.batch_encoder (the fused batch encoder, compilation
counting, sharding) and of the file_encoder that runs it over image files
(the threaded reader, encode_rows / fit_reduction / encode_methods, which
is also tested through pipeline.encode): they share this module's jits.

Speed: compiling the JAX detector dominates. The region options here
(max_points=256, small N_max / N_min, L = 2) are this module's own, so no
jit cache entry is shared with other test modules; the fused 'o1' / 'o2'
batches (4 images of 64 x 48 px, padded to 64 x 64) compile once each and
are reused.
"""

import ctypes
import functools
import glob
import os
import subprocess
import sys
import textwrap

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy

from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.storage import records
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import method_table
from regagg_jax.features import reading
from regagg_jax.features import vgg19
from regagg_jax.regions import proposal

_OPTIONS = method_table.PoolingOptions(
  gem_power=3.0, offdiag_scale=1.0, log_method='qr', rmac_levels=3
)
_JAX_REGIONS = proposal.RegionOptions(
  backend='jax', n_max=48, n_min=12, num_clusters=2, max_points=256
)
_HESAFF_REGIONS = _JAX_REGIONS._replace(backend='hesaff')
_WIDTHS = (4, 8, 8, 16, 16)
_TOLERANCE = {'rtol': 1e-5, 'atol': 1e-6}  # float32, fused vs staged XLA


@pytest.fixture(scope='module')
def variables():
  return vgg19.init_params(jax.random.PRNGKey(0), widths=_WIDTHS)


@pytest.fixture(scope='module')
def paths(sample_paths):
  return [str(p) for p in sample_paths[:5]]


@pytest.fixture(scope='module')
def batch(paths):
  """Three 64 x 48 images padded to a batch of 4 (one empty slot)."""
  pictures = [reading.load(p, max_size=64) for p in paths[:3]]
  return reading.make_batch([0, 1, 2], pictures, 4)


@pytest.fixture(scope='module')
def reduction(variables, paths):
  return file_encoder.fit_reduction(
    variables,
    paths,
    range(5),
    k_prime=4,
    region_options=_HESAFF_REGIONS,
    max_size=64,
    batch_size=4,
  )


def _encode(variables, batch, method, reduction=None, whitening=None, **kwargs):
  outputs = batch_encoder.encode_batch(
    variables,
    batch.rgb,
    batch.sizes,
    batch.cells,
    reduction,
    whitening,
    method=method,
    region_options=_JAX_REGIONS,
    pooling_options=_OPTIONS,
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
  np.testing.assert_allclose(descriptors, staged[0], **_TOLERANCE)
  assert valid[:3, -1].all() and not valid[3].any()  # slot 3 is padding
  assert not descriptors[3].any() and not masks[3].any()
  np.testing.assert_allclose(
    np.linalg.norm(descriptors[valid], axis=-1), 1, rtol=1e-5
  )
  if method != 'crow':
    assert valid[:3, :-1].any()  # some cluster regions survive


def test_fit_reduction_is_the_uncentred_pca_of_eq3(variables, paths, reduction):
  """U^1 spans the top eigenvectors of sum f f^T over eq. (3) descriptors
  (numpy float64) and equals the one encode_methods fits for 'o2'."""
  pictures = [reading.load(p, max_size=64) for p in paths]
  summed, region_valid = [], []
  for start in (0, 4):
    rows = list(range(start, min(start + 4, 5)))
    part = reading.make_batch(rows, pictures[start : start + 4], 4)
    outputs = batch_encoder.run_batch(
      variables,
      part.rgb,
      part.sizes,
      part.cells,
      None,
      None,
      method=method_table.SUM,
      dtype='float32',
      region_options=_HESAFF_REGIONS,
      pooling_options=method_table.PoolingOptions(),
      staged=True,
    )
    summed.append(np.asarray(outputs[0])[: len(rows)])
    region_valid.append(np.asarray(outputs[1])[: len(rows)])
  x = np.concatenate(summed).reshape(-1, 16).astype(np.float64)
  x = x[np.concatenate(region_valid).reshape(-1)]
  _, vectors = np.linalg.eigh(x.T @ x)
  top = vectors[:, ::-1][:, :4]
  components = np.asarray(reduction.components, np.float64)
  assert components.shape == (16, 4)
  np.testing.assert_allclose(np.abs(top.T @ components), np.eye(4), atol=1e-4)
  stores = file_encoder.encode_methods(
    variables,
    paths,
    ('o2',),
    pooling_options=_OPTIONS,
    k_prime=4,
    region_options=_HESAFF_REGIONS,
    max_size=64,
    batch_size=4,
  )
  np.testing.assert_allclose(
    stores['o2'].reduction.components, reduction.components, atol=1e-5
  )


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


def test_encode_rows_of_a_subset_equal_those_of_a_full_encode(
  variables, paths, fused
):
  full = file_encoder.encode_rows(
    variables,
    paths,
    range(5),
    'o1',
    region_options=_JAX_REGIONS,
    pooling_options=_OPTIONS,
    max_size=64,
    batch_size=4,
  )
  part = file_encoder.encode_rows(
    variables,
    paths,
    [3, 1],
    'o1',
    region_options=_JAX_REGIONS,
    pooling_options=_OPTIONS,
    max_size=64,
    batch_size=4,
  )
  assert full.metadata['rows'] == [0, 1, 2, 3, 4]
  assert part.metadata['rows'] == [3, 1]  # the order of `rows`
  assert part.image_paths == (paths[3], paths[1])
  np.testing.assert_allclose(
    part.descriptors, full.descriptors[[3, 1]], **_TOLERANCE
  )
  np.testing.assert_array_equal(part.valid, full.valid[[3, 1]])
  np.testing.assert_array_equal(part.masks, full.masks[[3, 1]])
  np.testing.assert_allclose(
    full.descriptors[:3], fused['o1'][0][:3], **_TOLERANCE
  )
  assert part.metadata['sizes'] == [[48, 64], [48, 64]]
  assert part.metadata['whitening_hash'] == 'none'
  assert part.metadata['reduction_hash'] == 'none'
  assert part.metadata['skipped'] == [] and part.metadata['apply_exif']
  assert part.metadata['inputs_hash'] == full.metadata['inputs_hash']
  assert (part.grid == [3, 4]).all()


def test_encode_methods_agrees_with_encode_rows(variables, paths, reduction):
  """The staged multi-method pass == the one-pass fused encoder, 'o2' with
  the same U^1 included."""
  stores = file_encoder.encode_methods(
    variables,
    paths[:3],
    ('o1', 'o2', 'crow'),
    pooling_options=_OPTIONS,
    k_prime=4,
    region_options=_JAX_REGIONS,
    max_size=64,
    batch_size=4,
    reduction=reduction,
  )
  for method, store in stores.items():
    alone = file_encoder.encode_rows(
      variables,
      paths,
      range(3),
      method,
      region_options=_JAX_REGIONS,
      pooling_options=_OPTIONS,
      max_size=64,
      batch_size=4,
      reduction=reduction,
    )
    np.testing.assert_allclose(
      store.descriptors, alone.descriptors, **_TOLERANCE
    )
    np.testing.assert_array_equal(store.valid, alone.valid)
    assert store.metadata['reduction_hash'] == alone.metadata['reduction_hash']


def _write(path, array):
  assert cv2.imwrite(str(path), array[:, :, ::-1])
  return str(path)


@pytest.fixture(scope='module')
def mixed_paths(paths, tmp_path_factory):
  """Landscape samples, portrait and square pictures, unreadable files."""
  folder = tmp_path_factory.mktemp('mixed')
  rng = np.random.default_rng(1)
  portrait = _write(
    folder / 'portrait.png', rng.integers(0, 256, (80, 48, 3), np.uint8)
  )
  square = _write(
    folder / 'square.png', rng.integers(0, 256, (70, 70, 3), np.uint8)
  )
  broken = folder / 'broken.jpg'
  broken.write_bytes(b'not an image at all')
  return [
    paths[0],
    portrait,
    str(broken),
    paths[1],
    square,
    paths[2],
    str(folder / 'missing.jpg'),
    paths[3],
  ]


def _gem_rows(variables, image_paths, rows, **kwargs):
  return file_encoder.encode_rows(
    variables,
    image_paths,
    rows,
    'gem',
    region_options=None,
    pooling_options=_OPTIONS,
    max_size=96,
    batch_size=2,
    **kwargs,
  )


def test_unreadable_images_are_skipped_and_reported(variables, mixed_paths):
  store = _gem_rows(variables, mixed_paths, range(8))
  assert store.metadata['rows'] == [0, 1, 3, 4, 5, 7]
  skipped = dict(store.metadata['skipped'])
  assert sorted(skipped) == sorted([mixed_paths[2], mixed_paths[6]])
  assert 'not a readable image' in skipped[mixed_paths[2]]
  assert 'no such image file' in skipped[mixed_paths[6]]
  readable = _gem_rows(variables, mixed_paths, [0, 1, 3, 4, 5, 7])
  np.testing.assert_allclose(
    store.descriptors, readable.descriptors, **_TOLERANCE
  )
  assert store.metadata['sizes'][1] == [80, 48]
  assert readable.metadata['skipped'] == []


def test_encode_rows_whitens_and_records_the_whitening(variables, mixed_paths):
  rng = np.random.default_rng(2)
  whitening = pca.fit(
    rng.normal(size=(40, 16)).astype(np.float32), 6, whiten=True
  )
  plain = _gem_rows(variables, mixed_paths, [0, 1])
  whitened = _gem_rows(variables, mixed_paths, [0, 1], whitening=whitening)
  assert whitened.metadata['whitening_hash'] == records.hash_params(whitening)
  assert whitened.metadata['whitening_hash'] != 'none'
  assert whitened.descriptors.shape == (2, 1, 6)
  np.testing.assert_allclose(
    whitened.descriptors,
    pca.apply(whitening, jnp.asarray(plain.descriptors), plain.valid),
    **_TOLERANCE,
  )


def test_thread_count_and_prefetch_do_not_change_the_output(
  variables, mixed_paths
):
  rows = [7, 4, 0, 2, 1, 5, 3]
  one = _gem_rows(variables, mixed_paths, rows, num_threads=1, prefetch=0)
  four = _gem_rows(
    variables, mixed_paths, iter(np.array(rows)), num_threads=4, prefetch=3
  )  # any iterable of integers
  assert one.metadata['rows'] == four.metadata['rows'] == [7, 4, 0, 1, 5, 3]
  assert all(type(row) is int for row in four.metadata['rows'])  # JSON
  np.testing.assert_array_equal(one.descriptors, four.descriptors)
  np.testing.assert_array_equal(one.masks, four.masks)
  assert one.metadata['skipped'] == four.metadata['skipped']


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
      pooling_options=_OPTIONS,
      **kwargs,
    )[0].block_until_ready()
    return batch_encoder.compilations() - start

  start = batch_encoder.compilations()
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


def test_bad_arguments_are_refused(variables, batch, paths):
  def call(
    method='o1',
    rgb=batch.rgb,
    cells=batch.cells,
    reduction=None,
    region_options=_JAX_REGIONS,
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
      pooling_options=_OPTIONS,
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
  rows = functools.partial(_gem_rows, variables, paths)
  with pytest.raises(ValueError, match='row 5 is outside the 5 images'):
    rows([0, 5])
  with pytest.raises(ValueError, match='rows must not repeat'):
    rows([1, 1])
  with pytest.raises(ValueError, match='num_threads'):
    rows([0], num_threads=0)
  with pytest.raises(ValueError, match='needs region_options'):
    file_encoder.fit_reduction(
      variables, paths, [0], k_prime=4, region_options=None
    )
  with pytest.raises(ValueError, match='no readable image'):
    file_encoder.fit_reduction(
      variables,
      ['/nonexistent.jpg'],
      [0],
      k_prime=4,
      region_options=_HESAFF_REGIONS,
    )


_SHARDED = """
import jax, numpy as np
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import parallel
from regagg_jax.aggregation import method_table
from regagg_jax.features import vgg19
from regagg_jax.aggregation.method_table import PoolingOptions
from regagg_jax.regions.proposal import RegionOptions
assert jax.device_count() == 4, jax.devices()
variables = vgg19.init_params(jax.random.PRNGKey(0), widths={widths})
paths = {paths}
kwargs = dict(region_options={regions}, pooling_options={options},
              max_size=64, batch_size=4)
single = file_encoder.encode_rows(variables, paths, range(len(paths)),
                                  {method!r}, **kwargs)
sharded = file_encoder.encode_rows(variables, paths, range(len(paths)),
                                   {method!r}, mesh=parallel.make_mesh(),
                                   **kwargs)
np.testing.assert_allclose(sharded.descriptors, single.descriptors,
                           rtol=1e-5, atol=1e-6)
np.testing.assert_array_equal(sharded.valid, single.valid)
np.testing.assert_array_equal(sharded.masks, single.masks)
assert sharded.metadata['rows'] == single.metadata['rows']
if {fused}:  # each device runs its own images: no cross-device collectives
  mesh = parallel.make_mesh()
  batch = parallel.shard_batch(mesh, (
      np.zeros((4, 64, 64, 3), np.uint8), np.full((4, 2), 64, np.int32),
      np.ones((4, 4, 4), bool)))
  hlo = batch_encoder._encode_sharded.lower(
      variables, *batch, None, None, mesh=mesh,
      method=method_table.POOLING[{method!r}], dtype='float32',
      region_options={regions},
      pooling_options={options}).compile().as_text()
  assert 'all-reduce' not in hlo and 'all-gather' not in hlo, 'collectives'
print('SHARDED_OK', single.descriptors.shape)
"""


@pytest.mark.parametrize(
  'method, regions',
  [
    ('gem', None),
    ('o1', _HESAFF_REGIONS),
    pytest.param('o1', _JAX_REGIONS, marks=pytest.mark.slow),
  ],
)
def test_mesh_sharded_encode_rows_equals_single_device(paths, method, regions):
  """4 host CPU devices (a subprocess): batches sharded over a 1-D mesh."""
  pytest.importorskip('regagg_jax.encoding.parallel')
  script = _SHARDED.format(
    widths=_WIDTHS,
    paths=paths + paths[:2],
    regions=regions,
    options=_OPTIONS,
    method=method,
    fused=regions is None or regions is _JAX_REGIONS,
  )
  environment = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=(
      os.environ.get('XLA_FLAGS', '')
      + ' --xla_force_host_platform_device_count=4'
    ),
  )
  result = subprocess.run(
    [sys.executable, '-c', textwrap.dedent(script)],
    capture_output=True,
    text=True,
    env=environment,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'SHARDED_OK' in result.stdout


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


def test_encode_methods_takes_explicit_arguments(sample_paths):
  """No config: global methods need no region_options; M = 1, unit norm."""
  variables = vgg19.init_params(jax.random.PRNGKey(0), widths=(4, 4, 8, 8, 16))
  stores = file_encoder.encode_methods(
    variables,
    sample_paths[:3],
    ('gem', 'mac'),
    pooling_options=_OPTIONS,
    k_prime=6,
    max_size=64,
    batch_size=2,
  )
  for store in stores.values():
    assert store.descriptors.shape == (3, 1, 16)
    assert store.descriptors.dtype == np.float32 and store.valid.all()
    np.testing.assert_allclose(
      np.linalg.norm(store.descriptors, axis=-1), 1, rtol=1e-5
    )
    assert store.metadata['rows'] == [0, 1, 2] and store.reduction is None
    assert store.metadata['apply_exif'] and 'config_hash' not in store.metadata
  with pytest.raises(ValueError, match='region_options'):
    file_encoder.encode_methods(
      variables, sample_paths[:1], ('o1',), pooling_options=_OPTIONS, k_prime=6
    )
