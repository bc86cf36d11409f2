"""Tests for regagg_jax.storage.store_format: the files of a store
directory, their versions and their integrity checks."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from regagg_jax.storage import store_format
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader
from tests.storage.stores import PATHS
from tests.storage.stores import Encoder
from tests.storage.stores import build
from tests.storage.stores import encoded
from tests.storage.stores import random_store


def test_inconsistent_store_is_refused(tmp_path):
  store = random_store(np.random.default_rng(4))
  with pytest.raises(ValueError, match='paths'):
    store_writer.save_store(tmp_path / 's', store._replace(image_paths=('a',)))
  with pytest.raises(ValueError, match='descriptors'):
    store_writer.save_store(
      tmp_path / 's', store._replace(descriptors=store.descriptors[:2])
    )
  with pytest.raises(TypeError, match='bool'):
    store_writer.save_store(
      tmp_path / 's', store._replace(valid=store.valid * 1)
    )


@pytest.mark.parametrize('name', ['header.json', 'metadata.json'])
def test_other_format_versions_are_refused(tmp_path, name):
  store_writer.save_store(
    tmp_path / 'store', random_store(np.random.default_rng(5))
  )
  meta_file = tmp_path / 'store' / name
  metadata = json.loads(meta_file.read_text())
  metadata['format_version'] = store_format.FORMAT_VERSION + 1
  meta_file.write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match=f'{name} has format version 4'):
    store_reader.load_store(tmp_path / 'store')


def test_version_1_store_and_missing_directory_are_refused(tmp_path):
  old = tmp_path / 'old'
  old.mkdir()  # the version 1 layout: metadata.json and shards, no header
  (old / 'metadata.json').write_text(json.dumps({'format_version': 1}))
  for call in (
    lambda: store_reader.load_store(old),
    lambda: store_writer.build_store(
      old, None, image_paths=['a.jpg'], header={}
    ),
  ):
    with pytest.raises(
      ValueError,
      match='format version 1, this code reads version 3; re-create it',
    ):
      call()
  with pytest.raises(FileNotFoundError, match='header.json is missing'):
    store_reader.load_store(tmp_path / 'nothing')
  with pytest.raises(FileNotFoundError, match='header.json is missing'):
    store_writer.finalize_store(tmp_path / 'nothing')


def _flipped(file, position):
  data = bytearray(file.read_bytes())
  data[position] ^= 0xFF
  file.write_bytes(bytes(data))


def test_every_flipped_byte_of_a_finished_shard_is_refused(tmp_path):
  """A finished store checks each shard file against the sha256 that
  metadata.json records: a single-byte flip anywhere is named (bytes that
  no zip reader looks at included); unfinished, the
  shard's own digest and zip CRCs see every byte that holds data."""
  build(tmp_path / 's', Encoder(encoded(np.random.default_rng(40))))
  record = store_format.read_header(tmp_path / 's')
  digest = store_format.file_digest(tmp_path / 's', 1)
  assert (
    digest
    == json.loads((tmp_path / 's' / 'metadata.json').read_text())[
      'shard_sha256'
    ][1]
  )
  file = tmp_path / 's' / 'shard_00001.npz'
  original = file.read_bytes()
  positions = set(range(64)) | set(range(64, len(original), 13))
  for position in sorted(positions):  # every byte of the first zip header
    _flipped(file, position)
    with pytest.raises(ValueError, match='shard_00001.npz'):
      store_format.read_shard(tmp_path / 's', 1, record=record, sha256=digest)
    file.write_bytes(original)
  for position in range(0, len(original), 499):
    _flipped(file, position)
    with pytest.raises(ValueError, match='shard_00001.npz.*--mode=encode'):
      store_reader.load_store(tmp_path / 's')
    file.write_bytes(original)


def test_changed_contents_under_a_valid_zip_fail_the_shard_sha256(tmp_path):
  """Descriptors rewritten inside a well-formed zip (new CRCs, the old
  sha256 kept): only the shard's own digest sees it."""
  build(tmp_path / 's', Encoder(encoded(np.random.default_rng(41))), shards=[1])
  file = tmp_path / 's' / 'shard_00001.npz'
  with np.load(file) as npz:
    arrays = {k: npz[k] for k in npz.files}
  assert str(arrays['sha256']) == _reference_digest(arrays)
  arrays['descriptors'] = arrays['descriptors'] + np.float32(1e-3)
  np.savez(file, **arrays)
  with pytest.raises(
    ValueError, match='shard_00001.npz does not match the sha256 it was'
  ):
    store_format.read_shard(tmp_path / 's', 1)
  store_format.read_shard(tmp_path / 's', 1, arrays=False)  # info only


def _reference_digest(arrays):
  """sha256 of the info text, then name, dtype, shape and bytes of each
  array in name order (the layout store_format documents)."""
  digest = hashlib.sha256(str(arrays['info']).encode())
  for name in sorted(set(arrays) - {'info', 'sha256'}):
    array = arrays[name]
    digest.update(f'{name} {array.dtype.str} {array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


@pytest.mark.parametrize('how', ['swapped', 'copied', 'other store'])
def test_a_shard_in_the_wrong_place_is_refused_by_name(tmp_path, how):
  build(tmp_path / 's', Encoder(encoded(np.random.default_rng(42))))
  store = tmp_path / 's'
  one, two = store / 'shard_00001.npz', store / 'shard_00002.npz'
  if how == 'swapped':
    one.rename(store / 'x')
    two.rename(one)
    (store / 'x').rename(two)
  elif how == 'copied':
    shutil.copy(one, two)
  else:  # the same images in shards of 2: shard 2 is rows 4..5
    build(
      tmp_path / 'o', Encoder(encoded(np.random.default_rng(42))), shard_size=2
    )
    shutil.copy(tmp_path / 'o' / 'shard_00002.npz', two)
  record = store_format.read_header(store)
  expected = {
    'swapped': r'shard_00002.npz holds shard 1 \(input rows \[4, 8\]\), not '
    r'shard 2 \(input rows \[8, 10\]\): shard files swapped',
    'copied': r'shard_00002.npz holds shard 1 \(input rows \[4, 8\]\)',
    'other store': r'shard_00002.npz holds shard 2 \(input rows \[4, 6\]\), '
    r'not shard 2 \(input rows \[8, 10\]\)',
  }[how]
  for arrays in (True, False):
    with pytest.raises(ValueError, match=expected):
      store_format.read_shard(store, 2, record=record, arrays=arrays)
  if how == 'swapped':
    with pytest.raises(ValueError, match='shard_00001.npz holds shard 2'):
      store_format.read_shard(store, 1, record=record)


def test_shard_of_other_images_is_refused(tmp_path):
  """A shard whose number and rows fit but whose images are not the
  header's (a store of other photos)."""
  expected = encoded(np.random.default_rng(43))
  build(tmp_path / 's', Encoder(expected))
  other = [p.replace('images', 'others') for p in PATHS]
  renamed = expected._replace(
    image_paths=tuple(
      p.replace('images', 'others') for p in expected.image_paths
    )
  )
  build(tmp_path / 'o', Encoder(renamed), image_paths=other)
  shutil.copy(
    tmp_path / 'o' / 'shard_00001.npz', tmp_path / 's' / 'shard_00001.npz'
  )
  with pytest.raises(
    ValueError,
    match=r'shard_00001.npz holds other images than input rows 4..7 of the '
    r"store header \(first: \['/others/4.jpg'\]\)",
  ):
    store_format.read_shard(
      tmp_path / 's', 1, record=store_format.read_header(tmp_path / 's')
    )


@pytest.mark.parametrize('name', ['header.json', 'metadata.json'])
def test_an_edit_that_still_parses_breaks_the_seal(tmp_path, name):
  """A flipped letter inside an image path keeps the JSON valid: the
  sha256 the file was sealed with names it."""
  build(tmp_path / 's', Encoder(encoded(np.random.default_rng(44))))
  file = tmp_path / 's' / name
  text = file.read_text()
  position = text.index('/images/3.jpg') + 2  # in both files
  file.write_text(text[:position] + 'X' + text[position + 1 :])
  json.loads(file.read_text())  # still JSON
  with pytest.raises(
    ValueError, match=f'{name} does not match the sha256 it was written with'
  ):
    store_reader.load_store(tmp_path / 's')
