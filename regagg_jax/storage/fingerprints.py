"""Fingerprints of input images: a store knows which images it encoded.

  take          image files -> fingerprints (size, mtime, ctime, inode,
                sha256), None for a file that cannot be opened
  compare       recorded fingerprints vs the files now: changed, missing
  shard_rows    the input rows of a store shard whose image changed
  store_changes the changed rows of a store directory (every shard)
  check_loaded  refuses a store whose images changed since they were encoded
  digest        one hash of a store's image contents (keys fits, indexes)
  describe      'N images (a.jpg, b.jpg, ...)' for the logs

A shard records the fingerprint of each of its input rows, taken just
before they are encoded (store_writer.build_store), so a file replaced during
the encode reads as changed on the next run. A file is the same when its
size, mtime_ns, ctime_ns and inode are unchanged (one stat, ~2 us), else
when its sha256 is (0.9 ms per MB, 0.03 ms per 33 KB sample photo: under
1/1000 of VGG19's encode of it). mtime alone is not enough: cp -p, rsync
-a and os.utime restore it, but each of them (like any write or rename
onto the name) sets ctime to the present, which no user call can set
back; a file whose stat changed but whose bytes did not (touch, a copied
dataset) is hashed and kept.
"""

import hashlib
import os

from absl import logging

from regagg_jax.storage import records
from regagg_jax.storage import store_format

HASH = 'sha256'
"""hashlib algorithm of the content hash (the fastest here, SHA-NI)."""

_STAT = ('size', 'mtime_ns', 'ctime_ns', 'inode')


def _stat(path):
  status = os.stat(path)
  return {
    'size': status.st_size,
    'mtime_ns': status.st_mtime_ns,
    'ctime_ns': status.st_ctime_ns,
    'inode': status.st_ino,
  }


def _content_hash(path, *, chunk_bytes=1 << 20):
  digest = hashlib.new(HASH)
  with open(path, 'rb') as stream:  # hashlib.file_digest needs Python 3.11
    while chunk := stream.read(chunk_bytes):
      digest.update(chunk)
  return digest.hexdigest()


def take(paths):
  """Fingerprints of image files, stat first (a later write reads changed).

  Args:
    paths: N file paths.

  Returns:
    N dicts (size, mtime_ns, ctime_ns, inode: int; sha256: hex str), None
    for a file that is missing or cannot be read.
  """
  fingerprints = []
  for path in paths:
    try:
      fingerprint = _stat(path)
      fingerprint[HASH] = _content_hash(path)
    except OSError:
      fingerprint = None
    fingerprints.append(fingerprint)
  return fingerprints


def _same(recorded, path):
  """Whether the file at path still has the recorded fingerprint."""
  try:
    now = _stat(path)
    if now['size'] != recorded['size']:
      return False
    if all(now[k] == recorded[k] for k in _STAT):
      return True  # nothing wrote the file or its name since
    return _content_hash(path) == recorded[HASH]
  except OSError:
    return False


def compare(recorded, paths):
  """Positions whose file differs from its recorded fingerprint.

  Args:
    recorded: N fingerprints (`take`), None for unreadable files.
    paths: the N files.

  Returns:
    (changed, missing): int positions of files that differ (a recorded
    unreadable file now readable included), and of recorded files now
    gone or unreadable.
  """
  changed, missing = [], []
  for position, (fingerprint, path) in enumerate(zip(recorded, paths)):
    if fingerprint is None:
      if os.path.isfile(path) and os.access(path, os.R_OK):
        changed.append(position)
    elif not _same(fingerprint, path):
      (changed if os.path.isfile(path) else missing).append(position)
  return changed, missing


def shard_rows(record, number, info):
  """The input rows of shard `number` whose image changed since it was
  written, or None when the shard records no fingerprints.

  Args:
    record: the store's header.json record (store_format.read_header).
    number: shard number.
    info: the shard's info (store_format.read_shard).

  Returns:
    (changed, missing) absolute int rows (see `compare`), or None.
  """
  recorded = info.get('fingerprints')
  if recorded is None:
    return None
  start = number * record['shard_size']
  paths = record['image_paths'][start : start + record['shard_size']]
  if len(recorded) != len(paths):
    return list(range(start, start + len(paths))), []
  changed, missing = compare(recorded, paths)
  return [start + p for p in changed], [start + p for p in missing]


def _shard_infos(path):
  """(header record, the info of each shard or None when missing or
  unreadable) of a store directory."""
  record = store_format.read_header(path)
  infos = []
  for number in range(
    store_format.num_shards(len(record['image_paths']), record['shard_size'])
  ):
    try:
      infos.append(
        store_format.read_shard(path, number, record=record, arrays=False)[1]
      )
    except (FileNotFoundError, ValueError):
      infos.append(None)
  return record, infos


def store_changes(path):
  """Rows of a store directory changed since their shards were written.

  Args:
    path: store directory, finished or not (no header: nothing changed).

  Returns:
    sorted int rows whose image changed or is gone (unreadable and
    unfingerprinted shards are left to store_writer.build_store).
  """
  if not os.path.isfile(os.path.join(path, 'header.json')):
    return []
  record, infos = _shard_infos(path)
  rows = []
  for number, info in enumerate(infos):
    found = None if info is None else shard_rows(record, number, info)
    if found is not None:
      rows.extend(found[0] + found[1])
  return sorted(rows)


def describe(rows, image_paths, *, limit=5):
  """'N images (a.jpg, b.jpg, ...)': the first `limit` of them named."""
  names = ', '.join(str(image_paths[r]) for r in rows[:limit])
  more = ', ...' if len(rows) > limit else ''
  return f'{len(rows)} image{"s" * (len(rows) != 1)} ({names}{more})'


def check_loaded(path, record, infos):
  """Refuses a store whose images changed since they were encoded.

  Images now missing are only logged: a store stays usable for search
  without its images (moved workdir, other working directory). Shards
  without fingerprints (store_writer.save_store's) are not checked.

  Args:
    path: store directory, for the messages.
    record: its header.json record.
    infos: the info of each shard (store_format.read_shard).

  Raises:
    ValueError: naming the changed images and the command that re-encodes
      their shards.
  """
  changed, missing = [], []
  for number, info in enumerate(infos):
    found = shard_rows(record, number, info)
    if found is not None:
      changed += found[0]
      missing += found[1]
  if missing:
    logging.warning(
      '%s: %s encoded there are gone or unreadable now',
      path,
      describe(missing, record['image_paths']),
    )
  if changed:
    raise ValueError(
      f'{path}: {describe(changed, record["image_paths"])} changed since '
      'they were encoded; run the same command again (--mode=encode): it '
      're-encodes the shards holding them'
    )


def digest(path):
  """16 hex digits over the content hashes of a store's input rows, as its
  shards recorded them (what fits, indexes and graphs of it are keyed by),
  or None when a shard records none or is missing.

  Args:
    path: a store directory.
  """
  infos = _shard_infos(path)[1]
  if any(info is None or 'fingerprints' not in info for info in infos):
    return None
  return records.hash_config(
    [
      None if f is None else f[HASH]
      for info in infos
      for f in info['fingerprints']
    ]
  )


def unchanged_shard(path, record, number, info):
  """Whether shard `number` of a store still holds its images as they are
  now; logs one line naming those that are not (store_writer.build_store).

  Args:
    path: store directory, for the log.
    record: its header.json record.
    number: shard number.
    info: the shard's info (store_format.read_shard).
  """
  found = shard_rows(record, number, info)
  if found is None:
    logging.warning(
      '%s: shard %d records no image fingerprints (written before they '
      'were kept): encoding it again',
      path,
      number,
    )
    return False
  rows = sorted(found[0] + found[1])
  if rows:
    logging.warning(
      '%s: shard %d: %s changed or gone since encoded: encoding it again',
      path,
      number,
      describe(rows, record['image_paths']),
    )
  return not rows
