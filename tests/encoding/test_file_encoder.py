"""Tests of regagg_jax.encoding.file_encoder: image files -> stores, one
method a pass (encode_rows, fit_reduction, fit_regions)."""

import functools
import os
import subprocess
import sys
import textwrap

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.aggregation import method_table
from regagg_jax.aggregation import pca
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.features import reading
from regagg_jax.storage import records
from tests.encoding.conftest import HESAFF_REGIONS
from tests.encoding.conftest import JAX_REGIONS
from tests.encoding.conftest import OPTIONS
from tests.encoding.conftest import TOLERANCE
from tests.encoding.conftest import WIDTHS


def test_fit_reduction_is_the_uncentred_pca_of_eq3(variables, paths, reduction):
  """U^1 spans the top eigenvectors of sum f f^T over the valid eq. (3)
  region descriptors of batch_encoder's SUM pooling (numpy float64)."""
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
      region_options=HESAFF_REGIONS,
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


def _encode_batch(variables, image_paths):
  """'o1' descriptors of these images as one padded batch_encoder batch."""
  pictures = [reading.load(p, max_size=64) for p in image_paths]
  batch = reading.make_batch(list(range(len(pictures))), pictures, 4)
  descriptors, _, _ = batch_encoder.encode_batch(
    variables,
    batch.rgb,
    batch.sizes,
    batch.cells,
    None,
    None,
    method='o1',
    region_options=JAX_REGIONS,
    pooling_options=OPTIONS,
  )
  return np.asarray(descriptors)[: len(pictures)]


def test_encode_rows_of_a_subset_equal_those_of_a_full_encode(variables, paths):
  full = file_encoder.encode_rows(
    variables,
    paths,
    range(5),
    'o1',
    region_options=JAX_REGIONS,
    pooling_options=OPTIONS,
    max_size=64,
    batch_size=4,
  )
  part = file_encoder.encode_rows(
    variables,
    paths,
    [3, 1],
    'o1',
    region_options=JAX_REGIONS,
    pooling_options=OPTIONS,
    max_size=64,
    batch_size=4,
  )
  assert full.metadata['rows'] == [0, 1, 2, 3, 4]
  assert part.metadata['rows'] == [3, 1]  # the order of `rows`
  assert part.image_paths == (paths[3], paths[1])
  np.testing.assert_allclose(
    part.descriptors, full.descriptors[[3, 1]], **TOLERANCE
  )
  np.testing.assert_array_equal(part.valid, full.valid[[3, 1]])
  np.testing.assert_array_equal(part.masks, full.masks[[3, 1]])
  np.testing.assert_allclose(
    full.descriptors[:3], _encode_batch(variables, paths[:3]), **TOLERANCE
  )
  assert part.metadata['sizes'] == [[48, 64], [48, 64]]
  assert part.metadata['whitening_hash'] == 'none'
  assert part.metadata['reduction_hash'] == 'none'
  assert part.metadata['skipped'] == [] and part.metadata['apply_exif']
  assert part.metadata['inputs_hash'] == full.metadata['inputs_hash']
  assert (part.grid == [3, 4]).all()


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
    pooling_options=OPTIONS,
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
    store.descriptors, readable.descriptors, **TOLERANCE
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
    **TOLERANCE,
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


def test_bad_arguments_are_refused(variables, paths):
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
      region_options=HESAFF_REGIONS,
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
    ('o1', HESAFF_REGIONS),
    pytest.param('o1', JAX_REGIONS, marks=pytest.mark.slow),
  ],
)
def test_mesh_sharded_encode_rows_equals_single_device(paths, method, regions):
  """4 host CPU devices (a subprocess): batches sharded over a 1-D mesh."""
  pytest.importorskip('regagg_jax.encoding.parallel')
  script = _SHARDED.format(
    widths=WIDTHS,
    paths=paths + paths[:2],
    regions=regions,
    options=OPTIONS,
    method=method,
    fused=regions is None or regions is JAX_REGIONS,
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


def test_fit_regions_is_the_uncentred_pca_of_the_valid_regions():
  """Eq. (4)'s U^1: the top K' eigenvectors of sum f f^T (no centring) over
  the valid regions only; invalid ones (here huge) change nothing."""
  rng = np.random.default_rng(3)
  summed = [rng.normal(size=(4, 6)).astype(np.float32) + 2 for _ in range(5)]
  region_valid = [rng.random(4) < 0.7 for _ in range(5)]
  region_valid[0][:] = True
  for descriptors, valid in zip(summed, region_valid):
    descriptors[~valid] = 1e3
  fitted = file_encoder.fit_regions(summed, region_valid, 3)
  x = np.concatenate(summed).astype(np.float64)[np.concatenate(region_valid)]
  values, vectors = np.linalg.eigh(x.T @ x)
  top = vectors[:, ::-1][:, :3]
  components = np.asarray(fitted.components, np.float64)
  assert components.shape == (6, 3)
  np.testing.assert_allclose(np.abs(top.T @ components), np.eye(3), atol=1e-5)
  assert values[-3] > 1.01 * values[-4]  # a well separated subspace
