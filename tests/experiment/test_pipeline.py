"""Tests for regagg_jax.experiment.pipeline: encoding, fitting, search, config checks.

Search and fit are checked against float64 numpy references of eq. (6)-(8)
on synthetic stores; encoding runs a tiny random VGG on small real images.
"""

import functools

import jax
import numpy as np
import pytest

from configs import quick
from regagg_jax.evaluation import datasets
from regagg_jax.encoding import batch_encoder
from regagg_jax.features import images
from regagg_jax.storage import records
from regagg_jax.aggregation import pca
from regagg_jax.experiment import pipeline
from regagg_jax.aggregation import method_table
from regagg_jax.experiment import retrieval
from regagg_jax.storage import store_reader
from regagg_jax.experiment import workspace


def _config(**changes):
  config = quick.get_config()
  for key, value in changes.items():
    section, field = key.split('__')
    config[section][field] = value
  return config


def _store(config, rng, num_images=9, num_regions=4, dim=12, reduction=None):
  valid = rng.uniform(size=(num_images, num_regions)) > 0.3
  valid[:, -1] = True  # the whole image always exists
  valid[0, :-1] = False  # one image with R_M only
  descriptors = rng.normal(size=(num_images, num_regions, dim))
  descriptors /= np.linalg.norm(descriptors, axis=-1, keepdims=True)
  descriptors = np.where(valid[..., None], descriptors, 0).astype(np.float32)
  return records.Store(
    descriptors=descriptors,
    valid=valid,
    masks=np.ones((num_images, num_regions, 3, 4), bool),
    grid=np.full((num_images, 2), (3, 4), np.int32),
    image_paths=tuple(f'{i}.jpg' for i in range(num_images)),
    reduction=reduction,
    metadata={
      'config_hash': pipeline.store_hash(config),
      'config': pipeline.store_sections(config),
      'reduction_hash': records.hash_params(reduction),
      'rows': list(range(num_images)),
      'sizes': [[48, 64]] * num_images,
      'skipped': [],
    },
  )


def _whiten64(params, x, valid):
  """Reference eq. (6): l2(diag(scale) U^T (x - mean)), zero if invalid."""
  mean, components, scale = (np.asarray(a, np.float64) for a in params)
  y = ((x.astype(np.float64) - mean) @ components) * scale
  norm = np.linalg.norm(y, axis=-1, keepdims=True)
  y = y / np.where(norm > 0, norm, 1)
  return np.where(valid[..., None], y, 0)


def _search64(query, query_valid, database, database_valid, n_qe=None):
  """Reference eq. (7), and eq. (8) when n_qe is given, with loops."""
  num_q, num_n = len(query), len(database)
  scores = np.full((num_q, num_n), -np.inf)
  best = np.zeros((num_q, num_n), int)
  for q in range(num_q):
    for n in range(num_n):
      for i in np.flatnonzero(query_valid[q]):
        for j in np.flatnonzero(database_valid[n]):
          value = query[q, i] @ database[n, j]
          if value > scores[q, n]:
            scores[q, n], best[q, n] = value, j
  if n_qe is None:
    return scores, best
  expanded = np.full_like(scores, -np.inf)
  for q in range(num_q):
    top = np.argsort(-scores[q], kind='stable')[:n_qe]
    mean = sum(database[t, best[q, t]] for t in top)
    mean = mean / np.linalg.norm(mean)
    for n in range(num_n):
      for j in np.flatnonzero(database_valid[n]):
        expanded[q, n] = max(expanded[q, n], mean @ database[n, j])
  return expanded, best


@pytest.mark.parametrize('regional', [True, False])
@pytest.mark.parametrize('query_regions', ['all', 'whole'])
@pytest.mark.parametrize('qe', [False, True])
def test_search_matches_float64_reference(regional, query_regions, qe):
  config = _config(
    pooling__regional=regional,
    search__query_regions=query_regions,
    search__qe=qe,
    search__n_qe=3,
    search__chunk_size=4,
    pca__dim=5,
  )
  rng = np.random.default_rng(0)
  database = _store(config, rng)
  queries = _store(config, rng, num_images=4)
  fitted = pipeline.fit(config, database, fitted_on='synthetic')
  ranking = retrieval.search(config, queries, database, fitted)

  last = np.arange(4) == 3
  database_valid = database.valid & (last if not regional else True)
  whole_query = not regional or query_regions == 'whole'
  query_valid = queries.valid & (last if whole_query else True)
  expected, expected_best = _search64(
    _whiten64(fitted.whitening, queries.descriptors, query_valid),
    query_valid,
    _whiten64(fitted.whitening, database.descriptors, database_valid),
    database_valid,
    n_qe=3 if qe else None,
  )
  assert ranking.scores.shape == (4, 9) and ranking.scores.dtype == np.float32
  np.testing.assert_allclose(ranking.scores, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ranking.best, expected_best)
  np.testing.assert_array_equal(
    ranking.ranks, np.argsort(-ranking.scores, axis=1, kind='stable')
  )


def _capped(**changes):
  return _config(
    pca__dim=10, pca__min_vectors_per_dim=3, pca__min_whitened_dim=1, **changes
  )


def test_fit_uses_valid_regions_and_caps_dim():
  rng = np.random.default_rng(1)
  config = _capped()
  store = _store(config, rng, num_images=9, dim=12)
  fitted = pipeline.fit(config, store, fitted_on='db')
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
  whole = pipeline.fit(
    _capped(pooling__regional=False),
    store._replace(
      metadata=dict(
        store.metadata,
        config_hash=pipeline.store_hash(_config(pooling__regional=False)),
      )
    ),
  )
  assert whole.metadata['num_vectors'] == 9  # R_M of every image only
  assert whole.metadata['dim'] == 3


def test_fit_on_too_few_vectors_keeps_pca_without_whitening():
  rng = np.random.default_rng(7)
  config = _config(pca__dim=10)  # default margin: 16 vectors per dimension
  store = _store(config, rng, num_images=9, dim=12)
  fitted = pipeline.fit(config, store)
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


def test_store_and_fit_from_other_configs_are_refused():
  rng = np.random.default_rng(2)
  config = _config(pca__dim=4)
  database = _store(config, rng)
  queries = _store(config, rng, num_images=2)
  fitted = pipeline.fit(config, database)
  retrieval.search(config, queries, database, fitted)  # compatible: fine

  other = _config(pca__dim=4, pooling__k_prime=5)
  with pytest.raises(ValueError, match=r'encoded with config .*k_prime'):
    retrieval.search(other, queries, database, fitted)
  with pytest.raises(ValueError, match='fitted with other pca settings'):
    retrieval.search(_config(pca__dim=3), queries, database, fitted)
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
    retrieval.search(config, queries, reduced, pipeline.fit(config, reduced))


def test_hashes_follow_what_they_depend_on():
  base = _config()
  assert pipeline.store_hash(base) == pipeline.store_hash(
    _config(features__batch_size=7, pooling__regional=False, pca__dim=3)
  )
  assert pipeline.store_hash(base) != pipeline.store_hash(
    _config(pooling__k_prime=5)
  )
  assert pipeline.store_hash(base) != pipeline.store_hash(
    _config(regions__n_max=10)
  )
  # Global baselines do not depend on the region proposal.
  assert pipeline.store_hash(_config(pooling__method='gem')) == (
    pipeline.store_hash(_config(pooling__method='gem', regions__n_max=10))
  )
  assert pipeline.fit_hash(base) != pipeline.fit_hash(_config(pca__dim=3))
  assert pipeline.fit_hash(base) != pipeline.fit_hash(
    _config(pooling__regional=False)
  )


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
  config = _config(features__batch_size=2)
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
  config = _config(features__batch_size=3)
  paths = [p for p in small_images if 'broken' not in str(p)]
  together = pipeline.encode(config, paths)
  alone = pipeline.encode(config, paths[:1], reduction=together.reduction)
  np.testing.assert_allclose(
    alone.descriptors[0], together.descriptors[0], rtol=1e-4, atol=1e-5
  )
  np.testing.assert_array_equal(alone.valid[0], together.valid[0])
  cached = pipeline.encode_methods(config, paths, ('o2',))['o2']
  uncached = pipeline.encode_methods(
    _config(features__batch_size=3, features__cache_mib=0), paths, ('o2',)
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
    pipeline.encode_methods(_config(features__batch_size=1), paths, ('gem',))
  finally:
    batch_encoder.staged_forward = original
  assert counter['traces'] == 1  # three 80 px images, one bucket


@pytest.mark.parametrize('method', sorted(method_table.POOLING))
def test_every_method_encodes_finite_unit_descriptors(small_images, method):
  config = _config(pooling__method=method)
  store = pipeline.encode(config, small_images[:2])
  expected_regions = 8 if method_table.POOLING[method].regional else 1
  assert store.descriptors.shape[:2] == (2, expected_regions)
  assert np.isfinite(store.descriptors).all()
  norms = np.linalg.norm(store.descriptors[store.valid], axis=-1)
  np.testing.assert_allclose(norms, 1, rtol=1e-5)
  assert (store.reduction is not None) == (method_table.POOLING[method].reduced)
  assert store.metadata['config_hash'] == pipeline.store_hash(config)


def test_unknown_method_is_refused(small_images):
  with pytest.raises(ValueError, match='pooling method must be one of'):
    pipeline.encode_methods(_config(), small_images[:1], ('vlad',))


def test_encode_methods_matches_single_method_encoding(small_images):
  config = _config()
  paths = small_images[:2]
  both = pipeline.encode_methods(config, paths, ('o1', 'crow'))
  for method in ('o1', 'crow'):
    single = pipeline.encode(_config(pooling__method=method), paths)
    np.testing.assert_allclose(
      both[method].descriptors, single.descriptors, rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_jax_region_backend_encodes_the_batch(small_images):
  """regions.backend='jax' proposes regions for the padded batch at once."""
  config = _config(regions__backend='jax', features__batch_size=2)
  store = pipeline.encode(config, small_images[:2])
  assert store.descriptors.shape[:2] == (2, 8)
  assert store.valid[:, -1].all() and np.isfinite(store.descriptors).all()
  for row, (height, width) in enumerate(store.grid):
    assert not store.masks[row, :, height:].any()
    assert not store.masks[row, :, :, width:].any()


def test_min_cells_discards_small_regions(small_images):
  """regions.min_cells reaches proposal.propose."""
  config = _config()
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
  config = _config(pooling__method='gem')
  config.workdir = str(tmp_path)
  upright, _ = workspace.prepare(config, dataset)
  assert calls == [True, True] and upright.metadata['apply_exif']
  stored, _ = workspace.prepare(config, dataset._replace(apply_exif=False))
  assert calls == [True, True, False, False]  # encoded again, not reused
  assert not stored.metadata['apply_exif']
  key = f'tiny-database-{pipeline.store_hash(config)}'
  assert store_reader.load_store(tmp_path / 'stores' / key).metadata[
    'apply_exif'
  ]
  assert not store_reader.load_store(
    tmp_path / 'stores' / f'{key}-raw'
  ).metadata['apply_exif']
