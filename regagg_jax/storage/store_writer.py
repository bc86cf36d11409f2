"""Descriptor stores on disk, written: built shard by shard, resumable,
crash-safe.

  build_store     encodes the missing shards of a store directory
  finalize_store  writes metadata.json once every shard is there
  save_store      an in-memory records.Store -> a store directory, atomically

The directory layout (header.json, shard_NNNNN.npz, reduction.npz,
metadata.json) and its checksums are `store_format`'s, the header and what
belongs to it `store_header`'s; `store_reader` loads finished stores.
Every file is written atomically, so a run killed at any point leaves
whole shards only; `build_store` run again (by any number of processes,
each on its `shards`) encodes only the shards that are missing, damaged
(sha256) or misplaced (swapped or copied files). A store is reopened only
with the settings it was made with (its header). These functions take no
lock: experiment.stores holds the store's storage.locks lock around them,
so one run writes a store at a time.
"""

import glob
import os

from absl import logging

from regagg_jax.storage import atomic
from regagg_jax.storage import fingerprints
from regagg_jax.storage import records
from regagg_jax.storage import store_format
from regagg_jax.storage import store_header


ROW_KEYS = ('rows', 'sizes', 'skipped')  # metadata lists kept per shard


def build_store(
  path,
  encode_part,
  *,
  image_paths,
  header,
  shard_size=1000,
  dtype='float32',
  shards=None,
  reduction=None,
):
  """Encodes the missing shards of a store: resumable and crash-safe.

  Shard n holds input rows [n * shard_size, min((n + 1) * shard_size, N)).
  A shard file that is missing, unreadable, damaged (its sha256, or the
  file digest of a finished store's metadata.json), misplaced (another
  shard's number, rows or images: swapped or copied files), or whose images
  changed since (storage.fingerprints: size, stat, sha256), is encoded again
  with encode_part(rows) (logged, naming them) and written atomically with
  the fingerprints of its images; the other finished shards are kept. Each
  existing shard of `shards` is read once to check it.

  Args:
    path: store directory; created, or checked against these arguments.
    encode_part: list of int rows -> records.Store of their readable images
      (its metadata 'rows' absolute, e.g. file_encoder.encode_rows).
    image_paths: the N input image paths.
    header: JSON-serialisable dict the store must match (e.g.
      config_hash, whitening_hash — required when the descriptors are
      stored whitened —, inputs_hash, apply_exif); the parts' metadata may
      not contradict it.
    shard_size: input rows per shard.
    dtype: descriptor storage, 'float32' or 'float16' (loaded as float32).
    shards: shard numbers this call encodes (None: all), e.g.
      parallel.process_shards.
    reduction: U^1 of eq. (4) the descriptors depend on, or None.

  Returns:
    True when every shard exists (the store is then finalised), False when
    shards outside `shards` are still missing (call `finalize_store` once
    they are written).

  Raises:
    ValueError: the store holds other settings (naming the fields), bad
      arguments, or encode_part returned rows, images or metadata that
      do not belong to the store.
  """
  path = os.fspath(path)
  num_shards = store_format.num_shards(len(image_paths), shard_size)
  wanted = range(num_shards) if shards is None else sorted(set(shards))
  if any(not 0 <= n < num_shards for n in wanted):
    raise ValueError(f'shards must be in [0, {num_shards}), got {shards}')
  record = store_header.store_record(
    image_paths, header, shard_size, dtype, reduction
  )
  if (
    header.get('reduction_hash', record['reduction_hash'])
    != (record['reduction_hash'])
  ):
    raise ValueError('header reduction_hash is not the hash of reduction')
  store_header.open_store(path, record, reduction)
  digests = _finished_digests(path, num_shards)
  for number in wanted:
    try:
      info = store_format.read_shard(
        path, number, record=record, sha256=digests[number]
      )[1]
      if fingerprints.unchanged_shard(path, record, number, info):
        continue
    except FileNotFoundError:
      pass
    except ValueError as error:
      logging.warning('encoding an unreadable shard again: %s', error)
    if os.path.isfile(os.path.join(path, 'metadata.json')):
      os.remove(os.path.join(path, 'metadata.json'))  # unfinished again
    rows = list(
      range(
        number * shard_size, min((number + 1) * shard_size, len(image_paths))
      )
    )
    logging.info('encoding shard %d of %d of %s', number, num_shards, path)
    recorded = fingerprints.take([image_paths[r] for r in rows])  # first
    part = encode_part(rows)
    store_header.check_part(part, rows, record, number)
    store_format.write_shard(
      path,
      number,
      part,
      dtype,
      input_rows=(number * shard_size, number * shard_size + len(rows)),
      fingerprints=recorded,
    )
  if any(
    not os.path.isfile(store_format.shard_file(path, n))
    for n in range(num_shards)
  ):
    return False
  finalize_store(path)
  return True


def _finished_digests(path, num_shards):
  """The shard files' sha256 that a finished store's metadata.json records
  (None each for an unfinished store or a damaged metadata.json)."""
  try:
    finished = atomic.read_json(
      path, 'metadata.json', store_format.FORMAT_VERSION, sealed=True
    )
  except (FileNotFoundError, ValueError):
    return [None] * num_shards
  return finished['shard_sha256']


def finalize_store(path):
  """Writes metadata.json once every shard is written (atomically).

  Args:
    path: store directory.

  Raises:
    ValueError: naming the missing or unreadable shards.
  """
  path = os.fspath(path)
  record = store_format.read_header(path)
  num_shards = store_format.num_shards(
    len(record['image_paths']), record['shard_size']
  )
  infos, digests, problems = [], [], []
  for number in range(num_shards):
    try:  # every byte read: the digests recorded are of checked shards
      infos.append(store_format.read_shard(path, number, record=record)[1])
      digests.append(store_format.file_digest(path, number))
    except (FileNotFoundError, ValueError):
      problems.append(number)
  if problems:
    raise ValueError(
      f'{path} cannot be finalised: {len(problems)} of '
      f'{num_shards} shards are missing, unreadable or misplaced '
      f'({problems[:10]}); run build_store again (--mode=encode): it '
      'encodes exactly them'
    )
  metadata = dict(record['header'])
  for number, info in enumerate(infos):
    for key, value in info['metadata'].items():
      if key in ROW_KEYS:
        metadata.setdefault(key, []).extend(value)
      elif metadata.setdefault(key, value) != value:
        raise ValueError(
          f'{path}: shard {number} has {key} {value!r}, '
          f'other shards {metadata[key]!r}'
        )
  atomic.write_json(
    os.path.join(path, 'metadata.json'),
    atomic.seal(
      {
        'format_version': store_format.FORMAT_VERSION,
        'metadata': metadata,
        'num_images': sum(len(i['image_paths']) for i in infos),
        'shard_sha256': digests,
      }
    ),
  )
  for leftover in glob.glob(os.path.join(path, '*.tmp-*')):
    try:  # of killed runs (no file is being written: all are there)
      os.remove(leftover)
    except FileNotFoundError:  # removed by another process finalising
      pass


def save_store(path, store, *, shard_size=1000, dtype='float32'):
  """Writes an in-memory records.Store in the `build_store` format, atomically.

  Args:
    path: directory to create or replace.
    store: records.Store.
    shard_size: images per shard file.
    dtype: descriptor storage, 'float32' or 'float16'.

  Raises:
    ValueError, TypeError: an inconsistent store or bad arguments (the
      previous store at path, if any, is kept).
  """
  store_format.check_store(store)
  header = {k: v for k, v in store.metadata.items() if k not in ROW_KEYS}
  record = store_header.store_record(
    store.image_paths, header, shard_size, dtype, store.reduction
  )

  def write(directory):
    store_header.open_store(directory, record, store.reduction)
    for number in range(
      store_format.num_shards(len(store.image_paths), shard_size)
    ):
      rows = slice(number * shard_size, (number + 1) * shard_size)
      metadata = dict(
        header,
        **{
          k: store.metadata[k][rows]
          for k in ('rows', 'sizes')
          if k in store.metadata
        },
      )
      if 'skipped' in store.metadata:  # all in shard 0
        metadata['skipped'] = store.metadata['skipped'] if not number else []
      store_format.write_shard(
        directory,
        number,
        records.Store(
          store.descriptors[rows],
          store.valid[rows],
          store.masks[rows],
          store.grid[rows],
          store.image_paths[rows],
          None,
          metadata,
        ),
        dtype,
        input_rows=(
          rows.start,
          min(rows.stop, len(store.image_paths)),
        ),
      )
    finalize_store(directory)

  atomic.replace_directory(write, path)
