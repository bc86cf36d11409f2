"""Tests for regagg_jax.experiment.pipeline: encoding as a config says.

Encoding runs a tiny random VGG on small real images (fits: test_fitting,
hashes and checks: test_settings, search: test_retrieval).
"""

import functools

import jax
import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.encoding import batch_encoder
from regagg_jax.features import images
from regagg_jax.experiment import pipeline
from regagg_jax.experiment import settings
from regagg_jax.aggregation import method_table
from regagg_jax.storage import store_reader
from regagg_jax.experiment import workspace
from tests.experiment.synthetic import config_with


@pytest.fixture(scope='module')
def small_images(tmp_path_factory, sample_paths):
  """Six sample photos shrunk to 64 or 80 px (two shape buckets) + a bad file."""
  import cv2  # pylint: disable=g-import-not-at-top

  folder = tmp_path_factory.mktemp('images')
  paths = []
  for number, source in enumerate(sample_paths[:6]):
    image = images.resize_longer_side(
      images.load_image(source), 64 if number % 2 else 80
    )
    path = folder / f'image{number}.png'
    cv2.imwrite(str(path), image[..., ::-1])
    paths.append(path)
  bad = folder / 'broken.jpg'
  bad.write_bytes(b'not a jpeg at all')
  return paths[:3] + [bad] + paths[3:]


def test_encode_shapes_skips_bad_image_and_keeps_order(small_images):
  config = config_with(features__batch_size=2)
  store = pipeline.encode(config, small_images)
  assert store.descriptors.shape == (6, 8, 6 * 7 // 2)
  assert store.descriptors.dtype == np.float32
  assert store.valid.shape == (6, 8) and store.valid[:, -1].all()
  assert store.metadata['rows'] == [0, 1, 2, 4, 5, 6]
  assert [s[0] for s in store.metadata['skipped']] == [str(small_images[3])]
  assert 'broken.jpg' in store.metadata['skipped'][0][1]
  assert store.image_paths == tuple(
    str(p) for p in small_images if 'broken' not in str(p)
  )
  norms = np.linalg.norm(store.descriptors, axis=-1)
  np.testing.assert_allclose(norms[store.valid], 1, rtol=1e-5)
  np.testing.assert_array_equal(norms[~store.valid], 0)
  for row, (height, width) in enumerate(store.grid):
    np.testing.assert_array_equal(store.masks[row, -1, :height, :width], True)
    assert not store.masks[row, :, height:].any()
    assert not store.masks[row, :, :, width:].any()
  assert store.reduction.components.shape == (16, 6)


def test_encoding_does_not_depend_on_batch_mates_or_cache(small_images):
  """Mask invariance: padded batch slots and other images change nothing,
  and recomputed conv5_4 maps (no cache) give the cached result."""
  config = config_with(features__batch_size=3)
  paths = [p for p in small_images if 'broken' not in str(p)]
  together = pipeline.encode(config, paths)
  alone = pipeline.encode(config, paths[:1], reduction=together.reduction)
  np.testing.assert_allclose(
    alone.descriptors[0], together.descriptors[0], rtol=1e-4, atol=1e-5
  )
  np.testing.assert_array_equal(alone.valid[0], together.valid[0])
  cached = pipeline.encode_methods(config, paths, ('o2',))['o2']
  uncached = pipeline.encode_methods(
    config_with(features__batch_size=3, features__cache_mib=0), paths, ('o2',)
  )['o2']
  np.testing.assert_allclose(
    uncached.descriptors, cached.descriptors, rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    cached.descriptors, together.descriptors, rtol=1e-4, atol=1e-5
  )


def test_one_bucket_compiles_the_forward_once(small_images):
  counter = {'traces': 0}
  original = batch_encoder.staged_forward

  @functools.partial(jax.jit, static_argnames=('dtype',))
  def counting(variables, rgb, sizes, cells, *, dtype):
    counter['traces'] += 1
    return original(variables, rgb, sizes, cells, dtype=dtype)

  paths = [p for p, n in zip(small_images, range(7)) if n in (0, 2, 5)]
  try:
    batch_encoder.staged_forward = counting
    pipeline.encode_methods(
      config_with(features__batch_size=1), paths, ('gem',)
    )
  finally:
    batch_encoder.staged_forward = original
  assert counter['traces'] == 1  # three 80 px images, one bucket


@pytest.mark.parametrize('method', sorted(method_table.POOLING))
def test_every_method_encodes_finite_unit_descriptors(small_images, method):
  config = config_with(pooling__method=method)
  store = pipeline.encode(config, small_images[:2])
  expected_regions = 8 if method_table.POOLING[method].regional else 1
  assert store.descriptors.shape[:2] == (2, expected_regions)
  assert np.isfinite(store.descriptors).all()
  norms = np.linalg.norm(store.descriptors[store.valid], axis=-1)
  np.testing.assert_allclose(norms, 1, rtol=1e-5)
  assert (store.reduction is not None) == (method_table.POOLING[method].reduced)
  assert store.metadata['config_hash'] == settings.store_hash(config)


def test_unknown_method_is_refused(small_images):
  with pytest.raises(ValueError, match='pooling method must be one of'):
    pipeline.encode_methods(config_with(), small_images[:1], ('vlad',))


def test_encode_methods_matches_single_method_encoding(small_images):
  config = config_with()
  paths = small_images[:2]
  both = pipeline.encode_methods(config, paths, ('o1', 'crow'))
  for method in ('o1', 'crow'):
    single = pipeline.encode(config_with(pooling__method=method), paths)
    np.testing.assert_allclose(
      both[method].descriptors, single.descriptors, rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_jax_region_backend_encodes_the_batch(small_images):
  """regions.backend='jax' proposes regions for the padded batch at once."""
  config = config_with(regions__backend='jax', features__batch_size=2)
  store = pipeline.encode(config, small_images[:2])
  assert store.descriptors.shape[:2] == (2, 8)
  assert store.valid[:, -1].all() and np.isfinite(store.descriptors).all()
  for row, (height, width) in enumerate(store.grid):
    assert not store.masks[row, :, height:].any()
    assert not store.masks[row, :, :, width:].any()


def test_min_cells_discards_small_regions(small_images):
  """regions.min_cells reaches proposal.propose."""
  config = config_with()
  store = pipeline.encode(config, small_images[:2])
  cells = store.masks.sum(axis=(2, 3))
  threshold = int(np.median(cells[store.valid][:-1])) + 1
  config.regions.min_cells = threshold
  pruned = pipeline.encode(config, small_images[:2])
  np.testing.assert_array_equal(
    pruned.valid, store.valid & (cells >= threshold)
  )
  assert pruned.valid[:, -1].all()  # the whole image is the largest region
  assert pruned.valid.sum() < store.valid.sum()
  np.testing.assert_array_equal(
    pruned.masks[pruned.valid], store.masks[pruned.valid]
  )


def test_dataset_apply_exif_reaches_the_reader_and_the_store_cache(
  small_images, tmp_path, monkeypatch
):
  """Oxford / Paris (Dataset.apply_exif=False) are read without EXIF
  orientation, and a store read the other way is not reused."""
  paths = [p for p in small_images if 'broken' not in str(p)][:2]
  dataset = datasets.Dataset(
    name='tiny',
    protocol='custom',
    images=tuple(p.name for p in paths),
    queries=(),
    query_indices=np.zeros(0, np.int64),
    boxes=None,
    positives=(),
    junk=(),
    image_root=paths[0].parent,
  )
  calls = []
  original = images.load_image

  def recording(path, **kwargs):
    calls.append(kwargs.get('apply_exif', True))
    return original(path, **kwargs)

  monkeypatch.setattr(images, 'load_image', recording)
  config = config_with(pooling__method='gem')
  config.workdir = str(tmp_path)
  upright, _ = workspace.prepare(config, dataset)
  assert calls == [True, True] and upright.metadata['apply_exif']
  stored, _ = workspace.prepare(config, dataset._replace(apply_exif=False))
  assert calls == [True, True, False, False]  # encoded again, not reused
  assert not stored.metadata['apply_exif']
  key = f'tiny-database-{settings.store_hash(config)}'
  assert store_reader.load_store(tmp_path / 'stores' / key).metadata[
    'apply_exif'
  ]
  assert not store_reader.load_store(
    tmp_path / 'stores' / f'{key}-raw'
  ).metadata['apply_exif']
