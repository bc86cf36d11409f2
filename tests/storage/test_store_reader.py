"""Tests for regagg_jax.storage.store_reader: finished stores loaded, their
damaged or misplaced shards and U^1 named (and re-encoded by build_store)."""

import os

import numpy as np
import pytest

from regagg_jax.storage import store_reader
from regagg_jax.storage import store_writer
from tests.storage.stores import Encoder
from tests.storage.stores import assert_stores_equal
from tests.storage.stores import build
from tests.storage.stores import encoded
from tests.storage.stores import random_params
from tests.storage.stores import random_store
from tests.storage.stores import shard_files


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
    store_reader.load_store(tmp_path / 's')
  other = os.stat(tmp_path / 's' / 'shard_00000.npz')
  assert build(tmp_path / 's', encode_part)
  assert encode_part.calls[3:] == [[4, 5, 6, 7]]
  assert 'encoding an unreadable shard again' in caplog.text
  assert os.stat(tmp_path / 's' / 'shard_00000.npz') == other
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)


def test_skeleton_then_load_reduction_then_resume(tmp_path):
  """A store's U^1 is saved before any shard (encode_part=None, shards=[])
  and read back with load_reduction, finished or not."""
  rng = np.random.default_rng(18)
  reduction = random_params(rng, 8, 5)
  expected = encoded(rng, reduction=reduction)
  assert store_reader.load_reduction(tmp_path / 's') is None  # nothing yet
  assert not build(tmp_path / 's', None, shards=[], reduction=reduction)
  assert shard_files(tmp_path / 's') == []
  for got, want in zip(store_reader.load_reduction(tmp_path / 's'), reduction):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='3 of 3 shards missing'):
    store_reader.load_store(tmp_path / 's')
  assert build(tmp_path / 's', Encoder(expected), reduction=reduction)
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)
  build(tmp_path / 'plain', Encoder(encoded(rng)))
  assert store_reader.load_reduction(tmp_path / 'plain') is None


def test_corrupt_reduction_is_refused(tmp_path):
  rng = np.random.default_rng(17)
  store = random_store(rng)
  store_writer.save_store(tmp_path / 's', store)
  np.savez(
    tmp_path / 's' / 'reduction.npz', **random_params(rng, 8, 3)._asdict()
  )
  for load in (store_reader.load_store, store_reader.load_reduction):
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
    store_reader.load_store(tmp_path / 's')
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
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)
