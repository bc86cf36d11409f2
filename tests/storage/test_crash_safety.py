"""Stores survive a kill at each write and refuse damaged files by name."""

import json
import os

import numpy as np
import pytest

from regagg_jax.search import region_index
from regagg_jax.storage import atomic
from regagg_jax.storage import records
from regagg_jax.storage import store_format
from regagg_jax.storage import store_reader
from tests.storage.stores import Encoder
from tests.storage.stores import assert_stores_equal
from tests.storage.stores import build
from tests.storage.stores import encoded
from tests.storage.stores import random_params


def test_kill_before_reduction_is_written_does_not_wedge(tmp_path):
  """A run killed after the header, before reduction.npz (the old write
  order), resumes: load_reduction gives None (fit U^1 again) and
  build_store writes it; new stores write U^1 before the header."""
  rng = np.random.default_rng(30)
  reduction = random_params(rng, 8, 5)
  expected = encoded(rng, reduction=reduction)
  build(tmp_path / 's', None, shards=[], reduction=reduction)
  os.remove(tmp_path / 's' / 'reduction.npz')  # killed before U^1
  assert store_reader.load_reduction(tmp_path / 's') is None
  assert build(tmp_path / 's', Encoder(expected), reduction=reduction)
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)

  written = []
  original = atomic.atomic_write

  def recording(file, write):
    written.append(os.path.basename(file))
    original(file, write)

  atomic.atomic_write, saved = recording, atomic.atomic_write
  try:
    build(tmp_path / 'new', None, shards=[], reduction=reduction)
  finally:
    atomic.atomic_write = saved
  assert written == ['reduction.npz', 'header.json']


def test_kill_before_the_header_then_another_u1_fit_does_not_wedge(tmp_path):
  """Killed after reduction.npz, before header.json: the rerun fits U^1
  again (it may differ: another sample, another machine) and its U^1, not
  the orphan, is written with the header."""
  rng = np.random.default_rng(29)
  orphan, refit = random_params(rng, 8, 5), random_params(rng, 8, 5)
  build(tmp_path / 's', None, shards=[], reduction=orphan)
  os.remove(tmp_path / 's' / 'header.json')  # killed before its rename
  assert store_reader.load_reduction(tmp_path / 's') is None  # fit U^1 again
  expected = encoded(rng, reduction=refit)
  assert build(tmp_path / 's', Encoder(expected), reduction=refit)
  for got, want in zip(store_reader.load_reduction(tmp_path / 's'), refit):
    np.testing.assert_array_equal(got, want)
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)


def test_finalize_removes_every_leftover_temporary(tmp_path):
  expected = encoded(np.random.default_rng(31))
  build(tmp_path / 's', Encoder(expected), shards=[0])
  for name in ('header.json.tmp-1-dead', 'reduction.npz.tmp-2-dead'):
    (tmp_path / 's' / name).write_bytes(b'half')  # runs killed mid-write
  assert build(tmp_path / 's', Encoder(expected))
  assert not [f for f in os.listdir(tmp_path / 's') if '.tmp-' in f]
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)


def test_non_finite_descriptor_is_refused_and_not_written(tmp_path):
  expected = encoded(np.random.default_rng(32))
  descriptors = expected.descriptors.copy()
  descriptors[1, 0, 2] = np.nan
  encode_part = Encoder(expected._replace(descriptors=descriptors))
  with pytest.raises(
    ValueError, match=r"shard 0: non-finite descriptors of \['/images/1.jpg'\]"
  ):
    build(tmp_path / 's', encode_part)
  assert not os.path.exists(store_format.shard_file(tmp_path / 's', 0))
  assert not [f for f in os.listdir(tmp_path / 's') if '.tmp-' in f]


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_corrupt_metadata_names_it_and_a_rerun_recovers(tmp_path, damage):
  expected = encoded(np.random.default_rng(33))
  encode_part = Encoder(expected)
  build(tmp_path / 's', encode_part)
  file = tmp_path / 's' / 'metadata.json'
  data = bytearray(file.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  else:
    data[0] ^= 0xFF
  file.write_bytes(bytes(data))
  with pytest.raises(
    ValueError,
    match=r'metadata.json is corrupt .*run the same command again',
  ):
    store_reader.load_store(tmp_path / 's')
  assert build(tmp_path / 's', encode_part)  # what the advice runs
  assert len(encode_part.calls) == 3  # no shard encoded again
  assert_stores_equal(store_reader.load_store(tmp_path / 's'), expected)


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'list'])
def test_corrupt_header_names_it_and_says_what_to_do(tmp_path, damage):
  expected = encoded(np.random.default_rng(34))
  build(tmp_path / 's', Encoder(expected))
  file = tmp_path / 's' / 'header.json'
  data = bytearray(file.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  elif damage == 'flip':
    data[0] ^= 0xFF
  else:
    data = bytearray(json.dumps([1, 2]).encode())
  file.write_bytes(bytes(data))
  message = (
    'header.json has format version None'
    if damage == 'list'
    else f'header.json is corrupt .*delete {tmp_path / "s"} and run'
  )
  for call in (store_reader.load_store, lambda p: build(p, Encoder(expected))):
    with pytest.raises(ValueError, match=message):
      call(tmp_path / 's')


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_corrupt_reduction_names_it_and_says_what_to_do(tmp_path, damage):
  rng = np.random.default_rng(35)
  reduction = random_params(rng, 8, 5)
  build(tmp_path / 's', Encoder(encoded(rng, reduction)), reduction=reduction)
  file = tmp_path / 's' / 'reduction.npz'
  data = bytearray(file.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  else:
    data[120] ^= 0xFF
  file.write_bytes(bytes(data))
  for load in (store_reader.load_store, store_reader.load_reduction):
    with pytest.raises(
      ValueError,
      match=r'reduction.npz (is unreadable|does not match).*delete .* run',
    ):
      load(tmp_path / 's')


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
@pytest.mark.parametrize('name', ['fit.json', 'params'])
def test_corrupt_fit_names_it_and_says_what_to_do(tmp_path, name, damage):
  rng = np.random.default_rng(36)
  fit = records.Fit(
    random_params(rng, 8, 5), random_params(rng, 5, 3), {'config_hash': 'a'}
  )
  records.save_fit(tmp_path / 'fit', fit)
  files = sorted(
    p for p in (tmp_path / 'fit').rglob('*') if p.is_file() and name in str(p)
  )
  for file in files:  # every file of the checkpoint (or fit.json)
    data = bytearray(file.read_bytes())
    if damage == 'truncate':
      data = data[: len(data) // 2]
    else:
      data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f'{name}.*run the same command again'):
    records.load_fit(tmp_path / 'fit')


def test_an_edited_fit_json_is_refused(tmp_path):
  """fit.json edited but still JSON (its dim, what it was fitted on):
  refused by its seal, naming it and the rerun that fits it anew."""
  rng = np.random.default_rng(39)
  records.save_fit(
    tmp_path / 'fit',
    records.Fit(None, random_params(rng, 5, 3), {'dim': 3, 'fitted_on': 'a'}),
  )
  file = tmp_path / 'fit' / 'fit.json'
  file.write_text(file.read_text().replace('"dim": 3', '"dim": 4'))
  with pytest.raises(
    ValueError,
    match='fit.json does not match the sha256 .*run the same command again',
  ):
    records.load_fit(tmp_path / 'fit')


def test_silently_changed_fit_data_is_caught_by_its_hash(tmp_path, monkeypatch):
  """Array data that reads back changed (a flip inside the checkpoint's
  data, which orbax does not see) is caught by the params_hash of fit.json."""
  rng = np.random.default_rng(37)
  records.save_fit(
    tmp_path / 'fit',
    records.Fit(None, random_params(rng, 5, 3), {'config_hash': 'a'}),
  )
  restore = records.ocp.PyTreeCheckpointer.restore

  def flipped(self, *args, **kwargs):
    tree = restore(self, *args, **kwargs)
    tree['whitening']['scale'] = tree['whitening']['scale'].copy()
    tree['whitening']['scale'].view(np.uint8)[0] ^= 1
    return tree

  monkeypatch.setattr(records.ocp.PyTreeCheckpointer, 'restore', flipped)
  with pytest.raises(ValueError, match='does not match the hash in its fit'):
    records.load_fit(tmp_path / 'fit')


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
@pytest.mark.parametrize('name', ['index.faiss', 'ids.npz', 'metadata.json'])
def test_corrupt_region_index_names_it_and_says_what_to_do(
  tmp_path, name, damage
):
  rng = np.random.default_rng(38)
  vectors = rng.normal(size=(6, 4, 8)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
  built = region_index.build(
    vectors, np.ones((6, 4), bool), kind='flat', options={}, metadata={}
  )
  region_index.save(tmp_path / 'index', built)
  file = tmp_path / 'index' / name
  data = bytearray(file.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  else:
    data[len(data) // 2] ^= 0xFF
  file.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f'{name}.*run the same command again'):
    region_index.load(tmp_path / 'index')
  assert not [f for f in os.listdir(tmp_path) if '.tmp-' in f]
