"""Tests for regagg_jax.storage.records (Store, Fit, hashes, fits, results) and for
the on-disk stores split out of it: sharded_store (sharded, resumable,
checked) and store_format (its files). One file: they share its builders."""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from regagg_jax.storage import records
from regagg_jax.aggregation import pca
from regagg_jax.storage import store_io
from regagg_jax.storage import store_format


def _random_params(rng, d_in, dim):
  return pca.PCAParams(
    mean=rng.normal(size=d_in).astype(np.float32),
    components=rng.normal(size=(d_in, dim)).astype(np.float32),
    scale=rng.uniform(size=dim).astype(np.float32),
  )


def _random_store(rng, num_images=7, num_regions=4, dim=6, reduction=True):
  valid = rng.uniform(size=(num_images, num_regions)) > 0.3
  descriptors = rng.normal(size=(num_images, num_regions, dim))
  descriptors /= np.linalg.norm(descriptors, axis=-1, keepdims=True)
  descriptors = np.where(valid[..., None], descriptors, 0).astype(np.float32)
  return records.Store(
    descriptors=descriptors,
    valid=valid,
    masks=rng.uniform(size=(num_images, num_regions, 5, 11)) > 0.5,
    grid=rng.integers(1, 6, size=(num_images, 2)).astype(np.int32),
    image_paths=tuple(f'/images/{i}.jpg' for i in range(num_images)),
    reduction=_random_params(rng, 8, 3) if reduction else None,
    metadata={
      'config_hash': 'abc',
      'skipped': [['/x.jpg', 'corrupt']],
      'config': {'pooling': {'method': 'o2'}},
      'rows': list(range(num_images)),
      'sizes': [[16 * i, 20] for i in range(num_images)],
    },
  )


def _assert_stores_equal(actual, expected, *, atol=0):
  for name in ('descriptors', 'valid', 'masks', 'grid'):
    got, want = getattr(actual, name), getattr(expected, name)
    assert got.dtype == want.dtype, name
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)
  assert actual.image_paths == expected.image_paths
  assert actual.metadata == expected.metadata
  assert (actual.reduction is None) == (expected.reduction is None)
  if expected.reduction is not None:
    for got, want in zip(actual.reduction, expected.reduction):
      np.testing.assert_array_equal(got, want)


def _shard_files(path):
  return sorted(f for f in os.listdir(path) if f.startswith('shard_'))


@pytest.mark.parametrize('shard_size', [1, 3, 1000])
@pytest.mark.parametrize('reduction', [True, False])
def test_store_round_trip_is_identical(tmp_path, shard_size, reduction):
  store = _random_store(np.random.default_rng(0), reduction=reduction)
  store_io.save_store(tmp_path / 'store', store, shard_size=shard_size)
  loaded = store_io.load_store(tmp_path / 'store')
  _assert_stores_equal(loaded, store)
  assert len(_shard_files(tmp_path / 'store')) == -(-7 // shard_size)


def test_float16_round_trip_is_close_and_smaller(tmp_path):
  store = _random_store(np.random.default_rng(1), num_images=40, dim=64)
  store_io.save_store(tmp_path / 'half', store, dtype='float16')
  store_io.save_store(tmp_path / 'full', store)
  loaded = store_io.load_store(tmp_path / 'half')
  assert loaded.descriptors.dtype == np.float32
  _assert_stores_equal(loaded, store, atol=1e-3)
  assert np.abs(loaded.descriptors - store.descriptors).max() > 0
  size = lambda name: os.path.getsize(tmp_path / name / 'shard_00000.npz')
  assert size('half') < 0.6 * size('full')
  with pytest.raises(ValueError, match='overflow float16'):
    store_io.save_store(
      tmp_path / 'big',
      store._replace(descriptors=store.descriptors * 1e6),
      dtype='float16',
    )
  with pytest.raises(ValueError, match='dtype must be one of'):
    store_io.save_store(tmp_path / 'bad', store, dtype='int8')


def test_empty_store_round_trip(tmp_path):
  store = _random_store(np.random.default_rng(1), num_images=0)
  store_io.save_store(tmp_path / 'store', store)
  loaded = store_io.load_store(tmp_path / 'store')
  assert loaded.descriptors.shape == (0, 4, 6)
  assert loaded.image_paths == ()
  assert loaded.metadata == store.metadata


def test_save_replaces_existing_store_and_leaves_no_temporaries(tmp_path):
  rng = np.random.default_rng(2)
  store_io.save_store(tmp_path / 'store', _random_store(rng, num_images=5))
  second = _random_store(rng, num_images=3)
  store_io.save_store(tmp_path / 'store', second)
  _assert_stores_equal(store_io.load_store(tmp_path / 'store'), second)
  assert os.listdir(tmp_path) == ['store']
  assert not [f for f in os.listdir(tmp_path / 'store') if '.tmp-' in f]


def test_failed_write_keeps_previous_store(tmp_path):
  rng = np.random.default_rng(3)
  first = _random_store(rng)
  store_io.save_store(tmp_path / 'store', first)
  bad = first._replace(metadata={'not_json': object()})
  with pytest.raises(TypeError):
    store_io.save_store(tmp_path / 'store', bad)
  _assert_stores_equal(store_io.load_store(tmp_path / 'store'), first)
  assert os.listdir(tmp_path) == ['store']


def test_inconsistent_store_is_refused(tmp_path):
  store = _random_store(np.random.default_rng(4))
  with pytest.raises(ValueError, match='paths'):
    store_io.save_store(tmp_path / 's', store._replace(image_paths=('a',)))
  with pytest.raises(ValueError, match='descriptors'):
    store_io.save_store(
      tmp_path / 's', store._replace(descriptors=store.descriptors[:2])
    )
  with pytest.raises(TypeError, match='bool'):
    store_io.save_store(tmp_path / 's', store._replace(valid=store.valid * 1))


@pytest.mark.parametrize('name', ['header.json', 'metadata.json'])
def test_other_format_versions_are_refused(tmp_path, name):
  store_io.save_store(
    tmp_path / 'store', _random_store(np.random.default_rng(5))
  )
  meta_file = tmp_path / 'store' / name
  metadata = json.loads(meta_file.read_text())
  metadata['format_version'] = store_format.FORMAT_VERSION + 1
  meta_file.write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match=f'{name} has format version 3'):
    store_io.load_store(tmp_path / 'store')


def test_version_1_store_and_missing_directory_are_refused(tmp_path):
  old = tmp_path / 'old'
  old.mkdir()  # the version 1 layout: metadata.json and shards, no header
  (old / 'metadata.json').write_text(json.dumps({'format_version': 1}))
  for call in (
    lambda: store_io.load_store(old),
    lambda: store_io.build_store(old, None, image_paths=['a.jpg'], header={}),
  ):
    with pytest.raises(
      ValueError,
      match='format version 1, this code reads version 2; re-create it',
    ):
      call()
  with pytest.raises(FileNotFoundError, match='header.json is missing'):
    store_io.load_store(tmp_path / 'nothing')
  with pytest.raises(FileNotFoundError, match='header.json is missing'):
    store_io.finalize_store(tmp_path / 'nothing')


# Resumable building. Ten input images; rows 3 and 7 are unreadable; shards
# of 4 rows have their own feature grids (masks padded on load).
_NUM_INPUTS, _UNREADABLE, _SHARD = 10, (3, 7), 4
_PATHS = [f'/images/{i}.jpg' for i in range(_NUM_INPUTS)]
_HEADER = {
  'config_hash': 'abc',
  'whitening_hash': 'none',
  'apply_exif': True,
  'config': {'regions': {'n_max': 60, 'n_min': 300}},
}


def _encoded(rng, reduction=None):
  """The store build_store must produce, and the per-image truth."""
  rows = [r for r in range(_NUM_INPUTS) if r not in _UNREADABLE]
  valid = rng.uniform(size=(len(rows), 4)) > 0.3
  descriptors = np.where(
    valid[..., None], rng.normal(size=(len(rows), 4, 5)), 0
  ).astype(np.float32)
  grid = np.array([(3 + r // _SHARD, 6 - r // _SHARD) for r in rows], np.int32)
  masks = np.zeros((len(rows), 4, 5, 6), bool)
  for position, (height, width) in enumerate(grid):
    masks[position, :, :height, :width] = (
      rng.uniform(size=(4, height, width)) > 0.5
    )
  return records.Store(
    descriptors,
    valid,
    masks,
    grid,
    tuple(_PATHS[r] for r in rows),
    reduction,
    dict(
      _HEADER,
      rows=rows,
      reduction_hash=records.hash_params(reduction),
      sizes=[[r, 2 * r] for r in rows],
      skipped=[[_PATHS[r], 'unreadable'] for r in _UNREADABLE],
    ),
  )


class _Encoder:
  """encode_part over an _encoded store; records the rows it is asked for."""

  def __init__(self, store, **changes):
    self.store, self.changes, self.calls = store, changes, []

  def __call__(self, rows):
    self.calls.append(rows)
    metadata = self.store.metadata
    positions = [p for p, r in enumerate(metadata['rows']) if r in rows]
    height, width = (
      int(v) for v in self.store.grid[positions].max(axis=0, initial=1)
    )
    return records.Store(
      self.store.descriptors[positions],
      self.store.valid[positions],
      self.store.masks[positions, :, :height, :width],
      self.store.grid[positions],
      tuple(self.store.image_paths[p] for p in positions),
      self.store.reduction,
      dict(
        metadata,
        **self.changes,
        rows=[metadata['rows'][p] for p in positions],
        sizes=[metadata['sizes'][p] for p in positions],
        skipped=[s for s in metadata['skipped'] if _PATHS.index(s[0]) in rows],
      ),
    )


def _build(path, encode_part, **kwargs):
  kwargs = dict(
    dict(image_paths=_PATHS, header=_HEADER, shard_size=_SHARD), **kwargs
  )
  return store_io.build_store(path, encode_part, **kwargs)


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_build_store_encodes_each_shard_once_and_loads_padded(tmp_path, dtype):
  rng = np.random.default_rng(10)
  expected = _encoded(rng, reduction=_random_params(rng, 8, 5))
  encode_part = _Encoder(expected)
  assert _build(
    tmp_path / 's', encode_part, dtype=dtype, reduction=expected.reduction
  )
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  _assert_stores_equal(
    store_io.load_store(tmp_path / 's'),
    expected,
    atol=1e-3 if dtype == 'float16' else 0,
  )
  stats = {f: os.stat(tmp_path / 's' / f) for f in _shard_files(tmp_path / 's')}
  assert _build(
    tmp_path / 's', encode_part, dtype=dtype, reduction=expected.reduction
  )  # finished: nothing to do
  assert len(encode_part.calls) == 3
  assert stats == {f: os.stat(tmp_path / 's' / f) for f in stats}


def test_disjoint_shard_lists_compose(tmp_path):
  expected = _encoded(np.random.default_rng(11))
  encode_part = _Encoder(expected)
  assert not _build(tmp_path / 's', encode_part, shards=[2, 0])
  with pytest.raises(
    ValueError,
    match=r'unfinished store: 1 of 3 shards '
    r'missing \[1\]; resume the encode',
  ):
    store_io.load_store(tmp_path / 's')
  with pytest.raises(
    ValueError,
    match=r'cannot be finalised: 1 of 3 shards '
    r'are missing or unreadable \(\[1\]\)',
  ):
    store_io.finalize_store(tmp_path / 's')
  assert _build(tmp_path / 's', encode_part, shards=[1])
  assert encode_part.calls == [[0, 1, 2, 3], [8, 9], [4, 5, 6, 7]]
  os.remove(tmp_path / 's' / 'metadata.json')  # a process finished last
  with pytest.raises(
    ValueError,
    match=r'0 of 3 shards missing \[\]; call '
    'finalize_store',
  ):
    store_io.load_store(tmp_path / 's')
  store_io.finalize_store(tmp_path / 's')
  single = _Encoder(expected)
  _build(tmp_path / 'one', single)
  _assert_stores_equal(
    store_io.load_store(tmp_path / 's'), store_io.load_store(tmp_path / 'one')
  )
  _assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)
  with pytest.raises(ValueError, match=r'shards must be in \[0, 3\)'):
    _build(tmp_path / 's', encode_part, shards=[3])


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'empty'])
def test_corrupt_shard_is_reported_and_encoded_again(tmp_path, damage, caplog):
  expected = _encoded(np.random.default_rng(12))
  encode_part = _Encoder(expected)
  _build(tmp_path / 's', encode_part)
  shard = tmp_path / 's' / 'shard_00001.npz'
  data = bytearray(shard.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  elif damage == 'flip':  # inside the descriptors' data: only the CRC sees it
    data[200] ^= 0xFF
  else:
    data = b''
  shard.write_bytes(bytes(data))
  with pytest.raises(
    ValueError,
    match=r'shard_00001.npz is unreadable .*'
    're-encodes exactly the damaged shards',
  ):
    store_io.load_store(tmp_path / 's')
  other = os.stat(tmp_path / 's' / 'shard_00000.npz')
  assert _build(tmp_path / 's', encode_part)
  assert encode_part.calls[3:] == [[4, 5, 6, 7]]
  assert 'encoding an unreadable shard again' in caplog.text
  assert os.stat(tmp_path / 's' / 'shard_00000.npz') == other
  _assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)


def test_leftover_temporaries_are_ignored_then_removed(tmp_path):
  expected = _encoded(np.random.default_rng(13))
  encode_part = _Encoder(expected)
  _build(tmp_path / 's', encode_part, shards=[0])
  half = tmp_path / 's' / 'shard_00001.npz.tmp-killed'
  half.write_bytes(b'PK half a shard')  # a run killed while writing
  with pytest.raises(ValueError, match='2 of 3 shards missing'):
    store_io.load_store(tmp_path / 's')
  assert _build(tmp_path / 's', encode_part)
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert not half.exists()
  _assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)


@pytest.mark.parametrize(
  'change, message',
  [
    (
      dict(header=dict(_HEADER, config_hash='xyz')),
      "header.config_hash: stored 'abc', given 'xyz'",
    ),
    (dict(header=dict(_HEADER, extra=1)), 'header.extra: stored None, given 1'),
    (
      dict(header=dict(_HEADER, config={'regions': {'n_max': 10, 'n_min': 3}})),
      'header.config.regions.n_max: stored 60, given 10; '
      'header.config.regions.n_min: stored 300, given 3',
    ),
    (dict(shard_size=5), 'shard_size: stored 4, given 5'),
    (dict(dtype='float16'), "dtype: stored 'float32', given 'float16'"),
    (
      dict(image_paths=_PATHS[:5] + ['/other.jpg'] + _PATHS[6:]),
      'image_paths: 10 stored, 10 given, first difference at row 5',
    ),
    (
      dict(image_paths=_PATHS[:-1]),
      'image_paths: 10 stored, 9 given, first difference at row 9',
    ),
    (
      dict(reduction=pca.PCAParams(np.zeros(2), np.eye(2), np.ones(2))),
      "reduction_hash: stored 'none', given '",
    ),
  ],
)
def test_mismatched_store_is_never_extended(tmp_path, change, message):
  expected = _encoded(np.random.default_rng(14))
  _build(tmp_path / 's', _Encoder(expected), shards=[0])
  before = sorted(os.listdir(tmp_path / 's'))
  encode_part = _Encoder(expected)
  with pytest.raises(
    ValueError, match='holds a store made with other settings'
  ) as error:
    _build(tmp_path / 's', encode_part, **change)
  assert message in str(error.value) and str(tmp_path / 's') in str(error.value)
  assert 'it is not extended' in str(error.value)
  assert encode_part.calls == []
  assert sorted(os.listdir(tmp_path / 's')) == before


def test_parts_that_do_not_belong_are_refused(tmp_path):
  rng = np.random.default_rng(15)
  expected = _encoded(rng)
  cases = [
    (
      _Encoder(expected, config_hash='xyz'),
      {},
      "returned config_hash 'xyz', the store header has 'abc'",
    ),
    (
      _Encoder(expected, whitening_hash='0123'),
      dict(header={'config_hash': 'abc'}),
      'whitened descriptors: record their whitening_hash',
    ),
    (
      lambda rows: _Encoder(expected)([r + 4 for r in rows]),
      {},
      'returned rows',
    ),
    (
      _Encoder(expected._replace(reduction=_random_params(rng, 3, 2))),
      {},
      'used another U\\^1',
    ),
  ]
  for number, (encode_part, kwargs, message) in enumerate(cases):
    with pytest.raises(ValueError, match=message):
      _build(tmp_path / str(number), encode_part, **kwargs)
    assert not _shard_files(tmp_path / str(number))
  with pytest.raises(ValueError, match='header reduction_hash is not'):
    _build(tmp_path / 'r', None, header=dict(_HEADER, reduction_hash='1'))
  with pytest.raises(ValueError, match='shard_size must be a positive int'):
    _build(tmp_path / 'z', None, shard_size=0)


def test_whitened_store_records_its_whitening_hash(tmp_path):
  whitened = _encoded(np.random.default_rng(16))
  header = dict(_HEADER, whitening_hash='0123')
  whitened = whitened._replace(metadata=dict(whitened.metadata, **header))
  assert _build(tmp_path / 's', _Encoder(whitened), header=header)
  record = json.loads((tmp_path / 's' / 'header.json').read_text())
  assert record['header']['whitening_hash'] == '0123'
  assert (
    store_io.load_store(tmp_path / 's').metadata['whitening_hash'] == '0123'
  )


def test_skeleton_then_load_reduction_then_resume(tmp_path):
  """A store's U^1 is saved before any shard (encode_part=None, shards=[])
  and read back with load_reduction, finished or not."""
  rng = np.random.default_rng(18)
  reduction = _random_params(rng, 8, 5)
  expected = _encoded(rng, reduction=reduction)
  assert store_io.load_reduction(tmp_path / 's') is None  # nothing yet
  assert not _build(tmp_path / 's', None, shards=[], reduction=reduction)
  assert _shard_files(tmp_path / 's') == []
  for got, want in zip(store_io.load_reduction(tmp_path / 's'), reduction):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='3 of 3 shards missing'):
    store_io.load_store(tmp_path / 's')
  assert _build(tmp_path / 's', _Encoder(expected), reduction=reduction)
  _assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)
  _build(tmp_path / 'plain', _Encoder(_encoded(rng)))
  assert store_io.load_reduction(tmp_path / 'plain') is None


def test_corrupt_reduction_is_refused(tmp_path):
  rng = np.random.default_rng(17)
  store = _random_store(rng)
  store_io.save_store(tmp_path / 's', store)
  np.savez(
    tmp_path / 's' / 'reduction.npz', **_random_params(rng, 8, 3)._asdict()
  )
  for load in (store_io.load_store, store_io.load_reduction):
    with pytest.raises(ValueError, match='reduction.npz does not match'):
      load(tmp_path / 's')


def test_dead_writers_temporaries_are_removed_live_ones_kept(tmp_path):
  """A write into a directory removes the temporaries of any file there
  left by dead processes of this host (a rerun may write another name);
  a live pid's and another host's are kept."""
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()  # its pid is now gone
  host = socket.gethostname()
  dead = [
    f'results.json.tmp-{host}-{child.pid}-abcd',
    f'x.npz.tmp-{host}-{child.pid}-ef01',
  ]
  kept = [
    f'x.json.tmp-{host}-{os.getpid()}-abcd',  # a live writer
    f'x.json.tmp-other-host-{child.pid}-abcd',
  ]
  for name in dead + kept:
    (tmp_path / name).write_bytes(b'half')
  (tmp_path / f'fit.old-{host}-{child.pid}-zz').mkdir()  # replace_directory's
  dead.append(f'fit.old-{host}-{child.pid}-zz')
  records.write_json(str(tmp_path / 'y.json'), {'a': 1})
  assert sorted(os.listdir(tmp_path)) == sorted(kept + ['y.json'])
  records.replace_directory(lambda d: None, str(tmp_path / 'sub' / 'd'))
  (tmp_path / 'sub' / f'e.tmp-{host}-{child.pid}-q').mkdir()
  records.replace_directory(lambda d: None, str(tmp_path / 'sub' / 'd'))
  assert os.listdir(tmp_path / 'sub') == ['d']


@pytest.mark.parametrize('reduction', [True, False])
def test_fit_round_trip_is_identical(tmp_path, reduction):
  rng = np.random.default_rng(6)
  fit = records.Fit(
    reduction=_random_params(rng, 8, 3) if reduction else None,
    whitening=_random_params(rng, 6, 2),
    metadata={'config_hash': 'abc', 'fitted_on': 'db'},
  )
  records.save_fit(tmp_path / 'fit', fit)
  loaded = records.load_fit(tmp_path / 'fit')
  assert loaded.metadata == fit.metadata
  for got, want in zip(loaded.whitening, fit.whitening):
    assert np.asarray(got).dtype == np.float32
    np.testing.assert_array_equal(got, want)
  assert (loaded.reduction is None) == (not reduction)
  if reduction:
    for got, want in zip(loaded.reduction, fit.reduction):
      np.testing.assert_array_equal(got, want)


def test_hashes_are_stable_and_sensitive():
  sections = {'pooling': {'method': 'o2', 'k_prime': 128}}
  assert records.hash_config(sections) == records.hash_config(
    {'pooling': {'k_prime': 128, 'method': 'o2'}}
  )
  assert records.hash_config(sections) != records.hash_config(
    {'pooling': {'method': 'o2', 'k_prime': 64}}
  )
  rng = np.random.default_rng(7)
  params = _random_params(rng, 4, 2)
  assert records.hash_params(params) == records.hash_params(
    pca.PCAParams(*[np.array(a) for a in params])
  )
  changed = params._replace(scale=params.scale + 1)
  assert records.hash_params(params) != records.hash_params(changed)
  assert records.hash_params(None) == 'none'


def test_write_results_json_and_csv(tmp_path):
  rng = np.random.default_rng(8)
  database = _random_store(rng, num_images=3, num_regions=2)
  masks = np.zeros((3, 2, 5, 11), bool)
  masks[1, 0, 1:3, 2:5] = True  # cells rows 1-2, cols 2-4
  masks[2, 1, 4, 10] = True  # the last cell, clipped to the image size
  database = database._replace(
    masks=masks,
    grid=np.array([[5, 11]] * 3, np.int32),
    metadata=dict(database.metadata, sizes=[[70, 170]] * 3),
  )
  queries = database._replace(image_paths=('q0.jpg',))
  scores = np.array([[0.1, 0.9, 0.5]], np.float32)
  ranks = np.array([[1, 2, 0]])
  best = np.array([[1, 0, 1]], np.int32)
  records.write_results(
    str(tmp_path / 'out'),
    scores,
    ranks,
    best,
    queries,
    database,
    top_k=2,
    header={'config': {'name': 'x'}},
  )
  written = json.loads((tmp_path / 'out.json').read_text())
  assert written['config'] == {'name': 'x'}
  assert written['queries'] == [
    {
      'query': 'q0.jpg',
      'results': [
        {
          'rank': 0,
          'image': '/images/1.jpg',
          'score': pytest.approx(0.9),
          'region': 0,
          'region_box': [32, 16, 80, 48],
        },
        {
          'rank': 1,
          'image': '/images/2.jpg',
          'score': pytest.approx(0.5),
          'region': 1,
          'region_box': [160, 64, 170, 70],
        },
      ],
    }
  ]
  with open(tmp_path / 'out.csv', newline='') as stream:
    rows = list(csv.reader(stream))
  assert rows[0] == [
    'query',
    'rank',
    'image',
    'score',
    'region',
    'x1',
    'y1',
    'x2',
    'y2',
  ]
  assert rows[1] == [
    'q0.jpg',
    '0',
    '/images/1.jpg',
    '0.900000',
    '0',
    '32',
    '16',
    '80',
    '48',
  ]
  assert len(rows) == 3
