"""Tests for regagg_jax.storage.store_writer: stores saved whole and built
shard by shard (resumable, finalised once every shard is there)."""

import hashlib
import json
import os

import numpy as np
import pytest

from regagg_jax.storage import atomic
from regagg_jax.storage import store_reader
from regagg_jax.storage import store_writer
from tests.storage.stores import Encoder
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
  store_writer.save_store(tmp_path / 'store', store, shard_size=shard_size)
  loaded = store_reader.load_store(tmp_path / 'store')
  assert_stores_equal(loaded, store)
  assert len(shard_files(tmp_path / 'store')) == -(-7 // shard_size)


def test_float16_round_trip_is_close_and_smaller(tmp_path):
  store = random_store(np.random.default_rng(1), num_images=40, dim=64)
  store_writer.save_store(tmp_path / 'half', store, dtype='float16')
  store_writer.save_store(tmp_path / 'full', store)
  loaded = store_reader.load_store(tmp_path / 'half')
  assert loaded.descriptors.dtype == np.float32
  assert_stores_equal(loaded, store, atol=1e-3)
  assert np.abs(loaded.descriptors - store.descriptors).max() > 0
  size = lambda name: os.path.getsize(tmp_path / name / 'shard_00000.npz')
  assert size('half') < 0.6 * size('full')
  with pytest.raises(ValueError, match='overflow float16'):
    store_writer.save_store(
      tmp_path / 'big',
      store._replace(descriptors=store.descriptors * 1e6),
      dtype='float16',
    )
  with pytest.raises(ValueError, match='dtype must be one of'):
    store_writer.save_store(tmp_path / 'bad', store, dtype='int8')


def test_empty_store_round_trip(tmp_path):
  store = random_store(np.random.default_rng(1), num_images=0)
  store_writer.save_store(tmp_path / 'store', store)
  loaded = store_reader.load_store(tmp_path / 'store')
  assert loaded.descriptors.shape == (0, 4, 6)
  assert loaded.image_paths == ()
  assert loaded.metadata == store.metadata


def test_save_replaces_existing_store_and_leaves_no_temporaries(tmp_path):
  rng = np.random.default_rng(2)
  store_writer.save_store(tmp_path / 'store', random_store(rng, num_images=5))
  second = random_store(rng, num_images=3)
  store_writer.save_store(tmp_path / 'store', second)
  assert_stores_equal(store_reader.load_store(tmp_path / 'store'), second)
  assert os.listdir(tmp_path) == ['store']
  assert not [f for f in os.listdir(tmp_path / 'store') if '.tmp-' in f]


def test_failed_write_keeps_previous_store(tmp_path):
  rng = np.random.default_rng(3)
  first = random_store(rng)
  store_writer.save_store(tmp_path / 'store', first)
  bad = first._replace(metadata={'not_json': object()})
  with pytest.raises(TypeError):
    store_writer.save_store(tmp_path / 'store', bad)
  assert_stores_equal(store_reader.load_store(tmp_path / 'store'), first)
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
    store_reader.load_store(tmp_path / 's'),
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
    store_reader.load_store(tmp_path / 's')
  with pytest.raises(
    ValueError,
    match=r'cannot be finalised: 1 of 3 shards '
    r'are missing, unreadable or misplaced \(\[1\]\)',
  ):
    store_writer.finalize_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part, shards=[1])
  assert encode_part.calls == [[0, 1, 2, 3], [8, 9], [4, 5, 6, 7]]
  os.remove(tmp_path / 's' / 'metadata.json')  # a process finished last
  with pytest.raises(
    ValueError,
    match=r'0 of 3 shards missing \[\]; call '
    'finalize_store',
  ):
    store_reader.load_store(tmp_path / 's')
  store_writer.finalize_store(tmp_path / 's')
  single = Encoder(expected)
  build(tmp_path / 'one', single)
  assert_stores_equal(
    store_reader.load_store(tmp_path / 's'),
    store_reader.load_store(tmp_path / 'one'),
  )
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)
  with pytest.raises(ValueError, match=r'shards must be in \[0, 3\)'):
    build(tmp_path / 's', encode_part, shards=[3])


def test_leftover_temporaries_are_ignored_then_removed(tmp_path):
  expected = encoded(np.random.default_rng(13))
  encode_part = Encoder(expected)
  build(tmp_path / 's', encode_part, shards=[0])
  half = tmp_path / 's' / 'shard_00001.npz.tmp-killed'
  half.write_bytes(b'PK half a shard')  # a run killed while writing
  with pytest.raises(ValueError, match='2 of 3 shards missing'):
    store_reader.load_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part)
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert not half.exists()
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)


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
    store_writer.finalize_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part)
  assert encode_part.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)


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
