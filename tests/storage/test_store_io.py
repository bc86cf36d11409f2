"""Tests for regagg_jax.storage.store_io: stores saved, loaded and built
shard by shard (resumable, checked)."""

import hashlib
import json
import os

import numpy as np
import pytest

from regagg_jax.aggregation import pca
from regagg_jax.storage import atomic
from regagg_jax.storage import store_io
from tests.storage.stores import Encoder
from tests.storage.stores import HEADER
from tests.storage.stores import PATHS
from tests.storage.stores import assert_stores_equal
from tests.storage.stores import build
from tests.storage.stores import encoded
from tests.storage.stores import random_params
from tests.storage.stores import random_store
from tests.storage.stores import shard_files


@pytest.mark.parametrize('shard_size', [1, 3, 1000])
@pytest.mark.parametrize('reduction', [True, False])
def test_store_round_trip_is_identical(tmp_path, shard_size, reduction):
  store = random_store(np.random.default_rng(0), reduction=reduction)
  store_io.save_store(tmp_path / 'store', store, shard_size=shard_size)
  loaded = store_io.load_store(tmp_path / 'store')
  assert_stores_equal(loaded, store)
  assert len(shard_files(tmp_path / 'store')) == -(-7 // shard_size)


def test_float16_round_trip_is_close_and_smaller(tmp_path):
  store = random_store(np.random.default_rng(1), num_images=40, dim=64)
  store_io.save_store(tmp_path / 'half', store, dtype='float16')
  store_io.save_store(tmp_path / 'full', store)
  loaded = store_io.load_store(tmp_path / 'half')
  assert loaded.descriptors.dtype == np.float32
  assert_stores_equal(loaded, store, atol=1e-3)
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
  store = random_store(np.random.default_rng(1), num_images=0)
  store_io.save_store(tmp_path / 'store', store)
  loaded = store_io.load_store(tmp_path / 'store')
  assert loaded.descriptors.shape == (0, 4, 6)
  assert loaded.image_paths == ()
  assert loaded.metadata == store.metadata


def test_save_replaces_existing_store_and_leaves_no_temporaries(tmp_path):
  rng = np.random.default_rng(2)
  store_io.save_store(tmp_path / 'store', random_store(rng, num_images=5))
  second = random_store(rng, num_images=3)
  store_io.save_store(tmp_path / 'store', second)
  assert_stores_equal(store_io.load_store(tmp_path / 'store'), second)
  assert os.listdir(tmp_path) == ['store']
  assert not [f for f in os.listdir(tmp_path / 'store') if '.tmp-' in f]


def test_failed_write_keeps_previous_store(tmp_path):
  rng = np.random.default_rng(3)
  first = random_store(rng)
  store_io.save_store(tmp_path / 'store', first)
  bad = first._replace(metadata={'not_json': object()})
  with pytest.raises(TypeError):
    store_io.save_store(tmp_path / 'store', bad)
  assert_stores_equal(store_io.load_store(tmp_path / 'store'), first)
  assert os.listdir(tmp_path) == ['store']


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_build_store_encodes_each_shard_once_and_loads_padded(tmp_path, dtype):
  rng = np.random.default_rng(10)
  expected = encoded(rng, reduction=random_params(rng, 8, 5))
  encode_part = Encoder(expected)
  assert build(
    tmp_path / 's', encode_part, dtype=dtype, reduction=expected.reduction
  )
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert_stores_equal(
    store_io.load_store(tmp_path / 's'),
    expected,
    atol=1e-3 if dtype == 'float16' else 0,
  )
  stats = {f: os.stat(tmp_path / 's' / f) for f in shard_files(tmp_path / 's')}
  assert build(
    tmp_path / 's', encode_part, dtype=dtype, reduction=expected.reduction
  )  # finished: nothing to do
  assert len(encode_part.calls) == 3
  assert stats == {f: os.stat(tmp_path / 's' / f) for f in stats}


def test_disjoint_shard_lists_compose(tmp_path):
  expected = encoded(np.random.default_rng(11))
  encode_part = Encoder(expected)
  assert not build(tmp_path / 's', encode_part, shards=[2, 0])
  with pytest.raises(
    ValueError,
    match=r'unfinished store: 1 of 3 shards '
    r'missing \[1\]; resume the encode',
  ):
    store_io.load_store(tmp_path / 's')
  with pytest.raises(
    ValueError,
    match=r'cannot be finalised: 1 of 3 shards '
    r'are missing, unreadable or misplaced \(\[1\]\)',
  ):
    store_io.finalize_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part, shards=[1])
  assert encode_part.calls == [[0, 1, 2, 3], [8, 9], [4, 5, 6, 7]]
  os.remove(tmp_path / 's' / 'metadata.json')  # a process finished last
  with pytest.raises(
    ValueError,
    match=r'0 of 3 shards missing \[\]; call '
    'finalize_store',
  ):
    store_io.load_store(tmp_path / 's')
  store_io.finalize_store(tmp_path / 's')
  single = Encoder(expected)
  build(tmp_path / 'one', single)
  assert_stores_equal(
    store_io.load_store(tmp_path / 's'), store_io.load_store(tmp_path / 'one')
  )
  assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)
  with pytest.raises(ValueError, match=r'shards must be in \[0, 3\)'):
    build(tmp_path / 's', encode_part, shards=[3])


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'empty'])
def test_corrupt_shard_is_reported_and_encoded_again(tmp_path, damage, caplog):
  expected = encoded(np.random.default_rng(12))
  encode_part = Encoder(expected)
  build(tmp_path / 's', encode_part)
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
    match=r'1 damaged shard: .*shard_00001.npz does not match its sha256 in '
    r'metadata.json .*--mode=encode\): it re-encodes exactly the damaged',
  ):
    store_io.load_store(tmp_path / 's')
  other = os.stat(tmp_path / 's' / 'shard_00000.npz')
  assert build(tmp_path / 's', encode_part)
  assert encode_part.calls[3:] == [[4, 5, 6, 7]]
  assert 'encoding an unreadable shard again' in caplog.text
  assert os.stat(tmp_path / 's' / 'shard_00000.npz') == other
  assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)


def test_leftover_temporaries_are_ignored_then_removed(tmp_path):
  expected = encoded(np.random.default_rng(13))
  encode_part = Encoder(expected)
  build(tmp_path / 's', encode_part, shards=[0])
  half = tmp_path / 's' / 'shard_00001.npz.tmp-killed'
  half.write_bytes(b'PK half a shard')  # a run killed while writing
  with pytest.raises(ValueError, match='2 of 3 shards missing'):
    store_io.load_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part)
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert not half.exists()
  assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)


@pytest.mark.parametrize(
  'change, message',
  [
    (
      dict(header=dict(HEADER, config_hash='xyz')),
      "header.config_hash: stored 'abc', given 'xyz'",
    ),
    (dict(header=dict(HEADER, extra=1)), 'header.extra: stored None, given 1'),
    (
      dict(header=dict(HEADER, config={'regions': {'n_max': 10, 'n_min': 3}})),
      'header.config.regions.n_max: stored 60, given 10; '
      'header.config.regions.n_min: stored 300, given 3',
    ),
    (dict(shard_size=5), 'shard_size: stored 4, given 5'),
    (dict(dtype='float16'), "dtype: stored 'float32', given 'float16'"),
    (
      dict(image_paths=PATHS[:5] + ['/other.jpg'] + PATHS[6:]),
      'image_paths: 10 stored, 10 given, first difference at row 5',
    ),
    (
      dict(image_paths=PATHS[:-1]),
      'image_paths: 10 stored, 9 given, first difference at row 9',
    ),
    (
      dict(reduction=pca.PCAParams(np.zeros(2), np.eye(2), np.ones(2))),
      "reduction_hash: stored 'none', given '",
    ),
  ],
)
def test_mismatched_store_is_never_extended(tmp_path, change, message):
  expected = encoded(np.random.default_rng(14))
  build(tmp_path / 's', Encoder(expected), shards=[0])
  before = sorted(os.listdir(tmp_path / 's'))
  encode_part = Encoder(expected)
  with pytest.raises(
    ValueError, match='holds a store made with other settings'
  ) as error:
    build(tmp_path / 's', encode_part, **change)
  assert message in str(error.value) and str(tmp_path / 's') in str(error.value)
  assert 'it is not extended' in str(error.value)
  assert encode_part.calls == []
  assert sorted(os.listdir(tmp_path / 's')) == before


def test_parts_that_do_not_belong_are_refused(tmp_path):
  rng = np.random.default_rng(15)
  expected = encoded(rng)
  cases = [
    (
      Encoder(expected, config_hash='xyz'),
      {},
      "returned config_hash 'xyz', the store header has 'abc'",
    ),
    (
      Encoder(expected, whitening_hash='0123'),
      dict(header={'config_hash': 'abc'}),
      'whitened descriptors: record their whitening_hash',
    ),
    (
      lambda rows: Encoder(expected)([r + 4 for r in rows]),
      {},
      'returned rows',
    ),
    (
      Encoder(expected._replace(reduction=random_params(rng, 3, 2))),
      {},
      'used another U\\^1',
    ),
  ]
  for number, (encode_part, kwargs, message) in enumerate(cases):
    with pytest.raises(ValueError, match=message):
      build(tmp_path / str(number), encode_part, **kwargs)
    assert not shard_files(tmp_path / str(number))
  with pytest.raises(ValueError, match='header reduction_hash is not'):
    build(tmp_path / 'r', None, header=dict(HEADER, reduction_hash='1'))
  with pytest.raises(ValueError, match='shard_size must be a positive int'):
    build(tmp_path / 'z', None, shard_size=0)


def test_whitened_store_records_its_whitening_hash(tmp_path):
  whitened = encoded(np.random.default_rng(16))
  header = dict(HEADER, whitening_hash='0123')
  whitened = whitened._replace(metadata=dict(whitened.metadata, **header))
  assert build(tmp_path / 's', Encoder(whitened), header=header)
  record = json.loads((tmp_path / 's' / 'header.json').read_text())
  assert record['header']['whitening_hash'] == '0123'
  assert (
    store_io.load_store(tmp_path / 's').metadata['whitening_hash'] == '0123'
  )


def test_skeleton_then_load_reduction_then_resume(tmp_path):
  """A store's U^1 is saved before any shard (encode_part=None, shards=[])
  and read back with load_reduction, finished or not."""
  rng = np.random.default_rng(18)
  reduction = random_params(rng, 8, 5)
  expected = encoded(rng, reduction=reduction)
  assert store_io.load_reduction(tmp_path / 's') is None  # nothing yet
  assert not build(tmp_path / 's', None, shards=[], reduction=reduction)
  assert shard_files(tmp_path / 's') == []
  for got, want in zip(store_io.load_reduction(tmp_path / 's'), reduction):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='3 of 3 shards missing'):
    store_io.load_store(tmp_path / 's')
  assert build(tmp_path / 's', Encoder(expected), reduction=reduction)
  assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)
  build(tmp_path / 'plain', Encoder(encoded(rng)))
  assert store_io.load_reduction(tmp_path / 'plain') is None


def test_corrupt_reduction_is_refused(tmp_path):
  rng = np.random.default_rng(17)
  store = random_store(rng)
  store_io.save_store(tmp_path / 's', store)
  np.savez(
    tmp_path / 's' / 'reduction.npz', **random_params(rng, 8, 3)._asdict()
  )
  for load in (store_io.load_store, store_io.load_reduction):
    with pytest.raises(ValueError, match='reduction.npz does not match'):
      load(tmp_path / 's')


@pytest.mark.parametrize('how', ['swapped', 'copied'])
def test_misplaced_shards_are_named_then_exactly_re_encoded(tmp_path, how):
  """shard_00001.npz and shard_00002.npz swapped (or 1 copied over 2):
  load_store names each misplaced file and the command; build_store (what
  --mode=encode runs) encodes exactly those shards again."""
  expected = encoded(np.random.default_rng(19))
  encode_part = Encoder(expected)
  build(tmp_path / 's', encode_part)
  one, two = (
    tmp_path / 's' / 'shard_00001.npz',
    tmp_path / 's' / 'shard_00002.npz',
  )
  if how == 'swapped':
    data = one.read_bytes()
    one.write_bytes(two.read_bytes())
    two.write_bytes(data)
  else:
    two.write_bytes(one.read_bytes())
  damaged = [1, 2] if how == 'swapped' else [2]
  with pytest.raises(ValueError) as error:
    store_io.load_store(tmp_path / 's')
  message = str(error.value)
  assert f'{len(damaged)} damaged shard' in message
  for number in (0, 1, 2):
    assert (f'shard_0000{number}.npz' in message) == (number in damaged)
  assert 'shard files swapped or copied over each other' in message
  assert 'run the same command again (--mode=encode)' in message
  kept = os.stat(tmp_path / 's' / 'shard_00000.npz')
  assert build(tmp_path / 's', encode_part)
  rows = {1: [4, 5, 6, 7], 2: [8, 9]}
  assert encode_part.calls[3:] == [rows[n] for n in damaged]
  assert os.stat(tmp_path / 's' / 'shard_00000.npz') == kept
  assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)


def test_misplaced_shard_of_an_unfinished_store_is_encoded_again(tmp_path):
  """Before metadata.json exists, the shard's info (number, rows) is what
  tells: a copied shard is encoded again, the store completes right."""
  expected = encoded(np.random.default_rng(20))
  encode_part = Encoder(expected)
  assert not build(tmp_path / 's', encode_part, shards=[0, 1])
  (tmp_path / 's' / 'shard_00002.npz').write_bytes(
    (tmp_path / 's' / 'shard_00001.npz').read_bytes()
  )
  with pytest.raises(ValueError, match=r'cannot be finalised: 1 of 3 .*\[2\]'):
    store_io.finalize_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part)
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert_stores_equal(store_io.load_store(tmp_path / 's'), expected)


def test_finished_store_records_every_shard_file_digest(tmp_path):
  build(tmp_path / 's', Encoder(encoded(np.random.default_rng(21))))
  finished = json.loads((tmp_path / 's' / 'metadata.json').read_text())
  assert finished['shard_sha256'] == [
    hashlib.sha256((tmp_path / 's' / f).read_bytes()).hexdigest()
    for f in shard_files(tmp_path / 's')
  ]
  assert (
    finished['sha256']
    == atomic.seal({k: v for k, v in finished.items() if k != 'sha256'})[
      'sha256'
    ]
  )
