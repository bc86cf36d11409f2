"""Tests for regagg_jax.storage.fingerprints and the stores that record
them (store_writer.build_store, load_store)."""

import hashlib
import logging
import os
import shutil

import numpy as np
import pytest

from regagg_jax.storage import fingerprints
from regagg_jax.storage import records
from regagg_jax.storage import store_format
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader


def _files(folder, count):
  """count files of distinct bytes (and sizes) in folder."""
  folder.mkdir()
  paths = []
  for i in range(count):
    paths.append(str(folder / f'{i}.jpg'))
    with open(paths[-1], 'wb') as stream:
      stream.write(bytes([i]) * (100 + i))
  return paths


def _replace(path, data):
  """Writes data over path and puts its atime and mtime back."""
  status = os.stat(path)
  with open(path, 'wb') as stream:
    stream.write(data)
  os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_take_records_stat_and_sha256(tmp_path):
  (path,) = _files(tmp_path / 'f', 1)
  (fingerprint, gone) = fingerprints.take([path, str(tmp_path / 'gone.jpg')])
  status = os.stat(path)
  assert fingerprint == {
    'size': 100,
    'mtime_ns': status.st_mtime_ns,
    'ctime_ns': status.st_ctime_ns,
    'inode': status.st_ino,
    'sha256': hashlib.sha256(b'\x00' * 100).hexdigest(),
  }
  assert gone is None


def test_same_size_file_with_its_mtime_restored_is_changed(tmp_path):
  paths = _files(tmp_path / 'f', 3)
  recorded = fingerprints.take(paths)
  _replace(paths[1], b'\x09' * 101)  # same size, same mtime
  assert os.stat(paths[1]).st_mtime_ns == recorded[1]['mtime_ns']
  assert fingerprints.compare(recorded, paths) == ([1], [])
  shutil.copy2(paths[0], paths[2])  # cp -p: the source's mtime
  assert fingerprints.compare(recorded, paths) == ([1, 2], [])


def test_unchanged_stat_skips_the_hash_and_same_bytes_are_kept(
  tmp_path, monkeypatch
):
  paths = _files(tmp_path / 'f', 3)
  recorded = fingerprints.take(paths)
  hashed = []
  original = fingerprints._content_hash
  monkeypatch.setattr(
    fingerprints, '_content_hash', lambda p: hashed.append(p) or original(p)
  )
  assert fingerprints.compare(recorded, paths) == ([], [])
  assert hashed == []
  os.utime(paths[0], ns=(1, 2))  # touched: stat differs, bytes do not
  assert fingerprints.compare(recorded, paths) == ([], [])
  assert hashed == [paths[0]]


def test_gone_and_newly_readable_files(tmp_path):
  paths = _files(tmp_path / 'f', 2) + [str(tmp_path / 'f' / 'late.jpg')]
  recorded = fingerprints.take(paths)
  assert recorded[2] is None
  os.remove(paths[0])
  with open(paths[2], 'wb') as stream:
    stream.write(b'now here')
  assert fingerprints.compare(recorded, paths) == ([2], [0])


def _encoder(paths, calls):
  """encode_part whose one descriptor per image is (first byte, size)."""

  def encode_part(rows):
    calls.append(list(rows))
    data = [open(paths[r], 'rb').read() for r in rows]
    count = len(rows)
    return records.Store(
      np.array([[[d[0], len(d)]] for d in data], np.float32),
      np.ones((count, 1), bool),
      np.ones((count, 1, 1, 1), bool),
      np.ones((count, 2), np.int32),
      tuple(paths[r] for r in rows),
      None,
      {'rows': list(rows), 'sizes': [[1, 1]] * count, 'skipped': []},
    )

  return encode_part


def _build(path, paths, calls):
  return store_writer.build_store(
    path,
    _encoder(paths, calls),
    image_paths=paths,
    header={'config_hash': 'abc'},
    shard_size=2,
  )


def test_build_store_re_encodes_only_the_shard_of_a_changed_image(
  tmp_path, caplog
):
  paths = _files(tmp_path / 'f', 5)
  calls = []
  assert _build(tmp_path / 's', paths, calls)
  _replace(paths[3], b'\x07' * 103)
  caplog.set_level(logging.WARNING)
  assert _build(tmp_path / 's', paths, calls)
  assert calls == [[0, 1], [2, 3], [4], [2, 3]]
  (line,) = [r.getMessage() for r in caplog.records if 'changed' in r.message]
  assert f'shard 1: 1 image ({paths[3]}) changed or gone' in line
  store = store_reader.load_store(tmp_path / 's')
  np.testing.assert_array_equal(store.descriptors[:, 0, 0], [0, 1, 2, 7, 4])
  assert _build(tmp_path / 's', paths, calls)  # nothing changed since
  assert len(calls) == 4


def test_load_store_refuses_changed_images_and_logs_gone_ones(tmp_path, caplog):
  paths = _files(tmp_path / 'f', 8)
  assert _build(tmp_path / 's', paths, [])
  os.remove(paths[0])
  caplog.set_level(logging.WARNING)
  assert store_reader.load_store(tmp_path / 's').image_paths == tuple(paths)
  assert f'1 image ({paths[0]}) encoded there are gone' in caplog.text
  for row in range(1, 8):
    _replace(paths[row], b'\xff' * (100 + row))
  with pytest.raises(ValueError, match='7 images .* changed since') as error:
    store_reader.load_store(tmp_path / 's')
  assert f'({", ".join(paths[1:6])}, ...)' in str(error.value)
  assert '--mode=encode' in str(error.value)


def test_shard_without_fingerprints_is_encoded_again(tmp_path):
  paths = _files(tmp_path / 'f', 4)
  calls = []
  assert _build(tmp_path / 's', paths, calls)
  part, info = store_format.read_shard(tmp_path / 's', 1)
  store_format.write_shard(
    tmp_path / 's', 1, part, 'float32', input_rows=info['input_rows']
  )  # without fingerprints: save_store's or older code's
  assert fingerprints.digest(tmp_path / 's') is None
  assert _build(tmp_path / 's', paths, calls)
  assert calls == [[0, 1], [2, 3], [2, 3]]
  assert fingerprints.digest(tmp_path / 's') is not None


def test_digest_follows_contents_not_stats(tmp_path):
  paths = _files(tmp_path / 'f', 3)
  _build(tmp_path / 's', paths, [])
  _build(tmp_path / 't', paths, [])
  first = fingerprints.digest(tmp_path / 's')
  assert first == fingerprints.digest(tmp_path / 't')
  assert first == records.hash_config(
    [hashlib.sha256(open(p, 'rb').read()).hexdigest() for p in paths]
  )
  _replace(paths[2], b'\x05' * 102)
  _build(tmp_path / 's', paths, [])
  assert fingerprints.digest(tmp_path / 's') != first
  os.remove(store_format.shard_file(tmp_path / 's', 0))
  assert fingerprints.digest(tmp_path / 's') is None


def test_store_changes_lists_rows_of_every_shard(tmp_path):
  paths = _files(tmp_path / 'f', 5)
  _build(tmp_path / 's', paths, [])
  assert fingerprints.store_changes(tmp_path / 's') == []
  _replace(paths[0], b'\x08' * 100)
  os.remove(paths[4])
  assert fingerprints.store_changes(tmp_path / 's') == [0, 4]
  assert fingerprints.store_changes(tmp_path / 'none') == []


def test_describe_names_the_first_images():
  names = [f'{i}.jpg' for i in range(9)]
  assert fingerprints.describe([3], names) == '1 image (3.jpg)'
  assert fingerprints.describe([0, 1, 2], names, limit=2) == (
    '3 images (0.jpg, 1.jpg, ...)'
  )
