"""Descriptor stores on disk: built shard by shard, resumable, crash-safe.

  build_store     encodes the missing shards of a store directory
  finalize_store  writes metadata.json once every shard is there
  load_store      a finished store -> records.Store (float32, padded masks)
  load_reduction  U^1 of eq. (4) kept in a store, finished or not
  save_store      an in-memory records.Store -> a store directory, atomically

The directory layout (header.json, shard_NNNNN.npz, reduction.npz,
metadata.json) and its checksums are `store_format`'s. Every file is
written atomically, so a run killed at any point leaves whole shards only;
`build_store` run again (by any number of processes, each on its `shards`)
encodes only the shards that are missing, damaged (sha256) or misplaced
(swapped or copied files). A store is reopened only with the settings it
was made with (its header). Masks are padded to the store's largest grid
on load. These functions take no lock: experiment.workspace holds the
store's storage.locks lock around them, so one run writes a store at a
time.
"""

import glob
import json
import os

from absl import logging
import numpy as np

from regagg_jax.storage import fingerprints
from regagg_jax.storage import provenance
from regagg_jax.storage import atomic
from regagg_jax.storage import records
from regagg_jax.aggregation import pca
from regagg_jax.storage import store_format


_ROW_KEYS = ('rows', 'sizes', 'skipped')  # metadata lists kept per shard


def _normalised(value):
  return json.loads(json.dumps(value))


def _record(image_paths, header, shard_size, dtype, reduction):
  """The header.json contents of a store."""
  if dtype not in store_format.DTYPES:
    raise ValueError(
      f'dtype must be one of {store_format.DTYPES}, got {dtype!r}'
    )
  return _normalised(
    {
      'format_version': store_format.FORMAT_VERSION,
      'header': header,
      'image_paths': [str(p) for p in image_paths],
      'shard_size': shard_size,
      'dtype': dtype,
      'reduction_hash': records.hash_params(reduction),
    }
  )


def _open_store(path, record, reduction):
  """Creates the store directory and header, or checks it matches."""
  os.makedirs(path, exist_ok=True)
  exists = os.path.isfile(os.path.join(path, 'header.json')) or (
    os.path.isfile(os.path.join(path, 'metadata.json'))
  )
  if exists:
    lines = provenance.differences(store_format.read_header(path), record)
    if lines:
      raise ValueError(
        f'{path} holds a store made with other settings ('
        f'{"; ".join(lines)}); it is not extended: use '
        'another path or delete it'
      )
  if reduction is not None and not (
    exists and os.path.isfile(os.path.join(path, 'reduction.npz'))
  ):  # before the header: a header never announces a missing U^1, and one
    # left by a run killed before its header may be another fit's
    atomic.atomic_write(
      os.path.join(path, 'reduction.npz'),
      lambda stream: np.savez(
        stream, **{k: np.asarray(v) for k, v in reduction._asdict().items()}
      ),
    )
  if not exists:
    atomic.write_json(os.path.join(path, 'header.json'), atomic.seal(record))


def _check_part(part, rows, record, number):
  """Refuses an encode_part result that does not belong to the store."""
  where = f'encode_part for shard {number} (rows {rows[:1]}..{rows[-1:]})'
  part_rows = part.metadata.get('rows', rows[: len(part.image_paths)])
  if len(part_rows) != len(part.image_paths) or not set(part_rows) <= set(rows):
    raise ValueError(f'{where} returned rows {part_rows}')
  if [str(p) for p in part.image_paths] != [
    record['image_paths'][r] for r in part_rows
  ]:
    raise ValueError(f'{where} returned other images than its rows')
  header = record['header']
  metadata = _normalised(part.metadata)
  for key in set(header) & set(metadata):
    if metadata[key] != header[key]:
      raise ValueError(
        f'{where} returned {key} {metadata[key]!r:.80}, '
        f'the store header has {header[key]!r:.80}'
      )
  if provenance.is_whitened(metadata) and ('whitening_hash' not in header):
    raise ValueError(
      f'{where} returned whitened descriptors: record their '
      'whitening_hash in the store header'
    )
  if part.reduction is not None and (
    records.hash_params(part.reduction) != record['reduction_hash']
  ):
    raise ValueError(
      f"{where} used another U^1 (eq. 4) than build_store's reduction"
    )


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
  record = _record(image_paths, header, shard_size, dtype, reduction)
  if (
    header.get('reduction_hash', record['reduction_hash'])
    != (record['reduction_hash'])
  ):
    raise ValueError('header reduction_hash is not the hash of reduction')
  _open_store(path, record, reduction)
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
    _check_part(part, rows, record, number)
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
      if key in _ROW_KEYS:
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


def load_reduction(path):
  """U^1 of eq. (4) kept in a store directory, finished or not.

  Args:
    path: store directory (`build_store`).

  Returns:
    pca.PCAParams, or None when the store has no U^1 or no header yet.

  Raises:
    ValueError: reduction.npz does not match the header's hash.
  """
  path = os.fspath(path)
  if not os.path.isfile(os.path.join(path, 'header.json')):
    return None
  record = store_format.read_header(path)
  if record['reduction_hash'] == provenance.NO_HASH:
    return None
  file = os.path.join(path, 'reduction.npz')
  if not os.path.isfile(file):  # killed before U^1 was written: fit again
    return None
  try:
    with np.load(file) as arrays:
      reduction = pca.PCAParams(**{k: arrays[k] for k in pca.PCAParams._fields})
  except Exception as error:  # zipfile and numpy raise many kinds on bad bytes
    raise ValueError(
      f'{file} is unreadable ({type(error).__name__}: {error}); delete '
      f'{path} and run the same command again to fit U^1 and encode anew'
    ) from error
  if records.hash_params(reduction) != record['reduction_hash']:
    raise ValueError(
      f'{file} does not match its header hash; delete {path} and run the '
      'same command again to fit U^1 and encode anew'
    )
  return reduction


def load_store(path):
  """Reads a finished store (see `build_store`, `save_store`).

  Args:
    path: the store directory.

  Returns:
    records.Store with float32 descriptors (float16 stores cast up), masks
    padded to the largest grid.

  Raises:
    FileNotFoundError: not a store directory.
    ValueError: another format version, an unfinished store (how many
      shards are missing), a damaged header or metadata.json, damaged or
      misplaced shards (naming each, and --mode=encode that re-encodes
      exactly them), or images changed since they were encoded (naming
      them; gone ones are logged).
  """
  path = os.fspath(path)
  record = store_format.read_header(path)
  num_shards = store_format.num_shards(
    len(record['image_paths']), record['shard_size']
  )
  if not os.path.isfile(os.path.join(path, 'metadata.json')):
    missing = [
      n
      for n in range(num_shards)
      if not os.path.isfile(store_format.shard_file(path, n))
    ]
    raise ValueError(
      f'{path} is an unfinished store: {len(missing)} of '
      f'{num_shards} shards missing {missing[:10]}; '
      + (
        'resume the encode (build_store with the same arguments)'
        if missing
        else 'call finalize_store'
      )
    )
  finished = atomic.read_json(
    path, 'metadata.json', store_format.FORMAT_VERSION, sealed=True
  )
  if len(finished['shard_sha256']) != num_shards:
    raise ValueError(
      f'{path}/metadata.json records {len(finished["shard_sha256"])} shards, '
      f'the header {num_shards}; run the same command again (--mode=encode)'
    )
  shards, problems = [], []
  for number, sha256 in enumerate(finished['shard_sha256']):
    try:
      shards.append(
        store_format.read_shard(path, number, record=record, sha256=sha256)
      )
    except (FileNotFoundError, ValueError) as error:
      problems.append(str(error))
  if problems:
    raise ValueError(
      f'{len(problems)} damaged shard{"s" * (len(problems) > 1)}: '
      f'{"; ".join(problems[:5])}; run the same command again '
      '(--mode=encode): it re-encodes exactly the damaged shards'
    )
  metadata = finished['metadata']
  fingerprints.check_loaded(path, record, [info for _, info in shards])
  parts = [p for p, _ in shards if len(p.valid)] or [shards[0][0]]
  height = max(p.masks.shape[2] for p in parts)
  width = max(p.masks.shape[3] for p in parts)
  masks = [
    np.pad(
      p.masks,
      (
        (0, 0),
        (0, 0),
        (0, height - p.masks.shape[2]),
        (0, width - p.masks.shape[3]),
      ),
    )
    for p in parts
  ]
  reduction = load_reduction(path)
  return records.Store(
    descriptors=np.concatenate([p.descriptors for p in parts]),
    valid=np.concatenate([p.valid for p in parts]),
    masks=np.concatenate(masks),
    grid=np.concatenate([p.grid for p in parts]),
    image_paths=tuple(i for p in parts for i in p.image_paths),
    reduction=reduction,
    metadata=metadata,
  )


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
  header = {k: v for k, v in store.metadata.items() if k not in _ROW_KEYS}
  record = _record(
    store.image_paths, header, shard_size, dtype, store.reduction
  )

  def write(directory):
    _open_store(directory, record, store.reduction)
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
