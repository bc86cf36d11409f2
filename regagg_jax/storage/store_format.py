"""The files of a descriptor store directory (format version 3).

  FORMAT_VERSION  the layout's version; readers refuse others
  DTYPES          descriptor storage dtypes
  check_store     refuses a Store whose arrays and paths disagree
  read_header     header.json of a store directory
  shard_file      the file of shard n
  num_shards      shards of a store of N input rows
  write_shard     a Store -> shard n (with its place and sha256), atomically
  file_digest     the sha256 of shard n's file (metadata.json keeps them)
  read_shard      shard n -> a Store (and its info), checked

A store directory holds:

  header.json      format version, the caller's `header` (config_hash,
                   whitening_hash, inputs_hash, ...), the input image paths,
                   shard_size, descriptor dtype and the U^1 hash; sealed
                   with the sha256 of its contents (atomic.seal)
  shard_00000.npz  input rows [n * shard_size, (n + 1) * shard_size): the
  shard_00001.npz  readable ones' descriptors (n, M, D) in the store dtype,
  ...              valid bool (n, M), masks bool (n, M, H_s, W_s) bit-packed
                   along W, grid int32 (n, 2), 'info' (JSON: the shard's
                   number and input rows [start, stop), its images' paths,
                   metadata, mask width and the fingerprints of all its
                   input rows, storage.fingerprints) and 'sha256', the
                   digest of the info text and of every array's name,
                   dtype, shape and bytes, computed when it is written
  reduction.npz    U^1 of eq. (4) (second-order descriptors depend on it);
                   its hash is the header's reduction_hash
  metadata.json    written last (store_writer.finalize_store): the merged
                   metadata and the sha256 of every shard file, sealed
                   like the header; a store without it is unfinished, not
                   loaded

Integrity: `read_shard` checks a shard's own sha256 (a truncated or
bit-flipped shard: its zip CRCs or the digest; about 1 byte in 10 of a zip,
in its local headers, is read by neither and changes no data) or, in a
finished store, the sha256 of the whole file that metadata.json records
(every byte), and, given the header, that it is the shard its file name
says (number, input rows, image paths): shard files swapped or copied over
each other are refused by name. store_writer.build_store
encodes such a shard again, like a missing one; store_reader.load_store names
every damaged shard and that `--mode=encode` (the same build) re-encodes
exactly them.

Every file is written to a temporary name and renamed (atomic.atomic_write),
so a run killed at any point leaves whole files only. `store_writer`
builds, finishes and saves stores from these pieces (`store_header`: what
they are made with), one writer at a time (storage.locks); `store_reader`
loads them.
"""

import hashlib
import io
import json
import os

import numpy as np

from regagg_jax.storage import atomic
from regagg_jax.storage import records


FORMAT_VERSION = 3
"""Version of the store layout; readers refuse other versions (3: shards
know their number and rows and carry a sha256, header and metadata are
sealed)."""

DTYPES = ('float32', 'float16')
"""Descriptor storage dtypes; stores always load as float32."""


def check_store(store):
  """Refuses a Store whose arrays and paths disagree.

  Args:
    store: records.Store.

  Raises:
    ValueError: leading shapes or path count differ from valid's (N, M).
    TypeError: valid or masks are not bool.
  """
  num_images, num_regions = store.valid.shape
  expected = {
    'descriptors': store.descriptors.shape[:2],
    'masks': store.masks.shape[:2],
    'grid': store.grid.shape[:1],
  }
  for name, shape in expected.items():
    if shape != (num_images, num_regions)[: len(shape)]:
      raise ValueError(
        f'store {name} has leading shape {shape}, expected '
        f'{(num_images, num_regions)[: len(shape)]}'
      )
  if len(store.image_paths) != num_images:
    raise ValueError(
      f'store has {len(store.image_paths)} paths for {num_images} images'
    )
  if store.valid.dtype != np.bool_ or store.masks.dtype != np.bool_:
    raise TypeError('store valid and masks must be bool')


def read_header(path):
  """The header.json record of a store directory (`sharded_store`).

  Args:
    path: store directory.

  Returns:
    dict: format_version, header, image_paths, shard_size, dtype and
    reduction_hash.

  Raises:
    FileNotFoundError: not a store directory.
    ValueError: another format version (an older layout included), or a
      corrupt or damaged header (naming it and what recovers it).
  """
  if not os.path.isfile(os.path.join(path, 'header.json')) and os.path.isfile(
    os.path.join(path, 'metadata.json')
  ):  # an older layout
    atomic.read_json(path, 'metadata.json', FORMAT_VERSION)
  return atomic.read_json(path, 'header.json', FORMAT_VERSION, sealed=True)


def shard_file(path, number):
  """The file of shard `number` in store directory `path`."""
  return os.path.join(path, f'shard_{number:05d}.npz')


def num_shards(num_images, shard_size):
  """Shards of a store of num_images input rows (at least 1).

  Raises:
    ValueError: shard_size is not a positive int.
  """
  if not isinstance(shard_size, int) or shard_size < 1:
    raise ValueError(f'shard_size must be a positive int, got {shard_size!r}')
  return max(1, -(-num_images // shard_size))


def _digest(info, arrays):
  """The sha256 of a shard's info text and arrays (names, dtypes, shapes,
  bytes)."""
  digest = hashlib.sha256(info.encode())
  for name in sorted(arrays):
    array = np.ascontiguousarray(arrays[name])
    digest.update(f'{name} {array.dtype.str} {array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def write_shard(path, number, part, dtype, *, input_rows, fingerprints=None):
  """Writes an records.Store as shard `number`, atomically.

  Args:
    path: store directory.
    number: shard number.
    part: records.Store of the shard's readable rows.
    dtype: descriptor storage, one of DTYPES.
    input_rows: (start, stop) the store's input rows the shard covers.
    fingerprints: of each input row of the shard (storage.fingerprints),
      kept in the info, or None.

  Raises:
    ValueError, TypeError: an inconsistent part, or descriptors that
      overflow dtype.
  """
  check_store(part)
  finite = np.isfinite(part.descriptors).all(axis=(1, 2))
  if not finite.all():
    raise ValueError(
      f'shard {number}: non-finite descriptors of '
      f'{[str(p) for p in np.asarray(part.image_paths)[~finite]][:10]}; the '
      'shard is not written'
    )
  with np.errstate(over='ignore'):
    descriptors = part.descriptors.astype(dtype)
  if not np.array_equal(
    np.isfinite(descriptors), np.isfinite(part.descriptors)
  ):
    raise ValueError(f'shard {number}: descriptors overflow {dtype}')
  info = json.dumps(
    {
      'number': number,
      'input_rows': [int(r) for r in input_rows],
      'image_paths': [str(p) for p in part.image_paths],
      'metadata': part.metadata,
      'mask_width': int(part.masks.shape[-1]),
      **({} if fingerprints is None else {'fingerprints': fingerprints}),
    }
  )
  arrays = dict(
    descriptors=descriptors,
    valid=part.valid,
    masks=np.packbits(part.masks, axis=-1),
    grid=part.grid,
  )
  sha256 = _digest(info, arrays)
  atomic.atomic_write(
    shard_file(path, number),
    lambda stream: np.savez(
      stream, info=np.array(info), sha256=np.array(sha256), **arrays
    ),
  )


def _check_place(file, number, info, record):
  """Refuses a shard that is not shard `number` of the store `record`
  (files swapped, copied over each other or from another store)."""
  found = info.get('number'), info.get('input_rows')
  if record is None:
    expected = number, found[1]
  else:
    size = record['shard_size']
    start = number * size
    stop = min(start + size, len(record['image_paths']))
    expected = number, [start, stop]
  if found != expected:
    raise ValueError(
      f'{file} holds shard {found[0]} (input rows {found[1]}), not shard '
      f'{expected[0]} (input rows {expected[1]}): shard files swapped or '
      'copied over each other'
    )
  if record is None:
    return
  paths, images = record['image_paths'], info.get('image_paths', [])
  rows = info['metadata'].get('rows')
  if rows is None:  # store_writer.save_store's parts without rows
    wanted = set(paths[start:stop])
    belongs = all(p in wanted for p in images)
  else:
    belongs = len(rows) == len(images) and all(
      start <= r < stop and paths[r] == p for r, p in zip(rows, images)
    )
  if not belongs:
    raise ValueError(
      f'{file} holds other images than input rows {start}..{stop - 1} of '
      f'the store header (first: {images[:1]})'
    )


def file_digest(path, number):
  """The sha256 (hex) of shard `number`'s file, as metadata.json keeps it."""
  with open(shard_file(path, number), 'rb') as stream:
    return hashlib.sha256(stream.read()).hexdigest()


def read_shard(path, number, *, record=None, arrays=True, sha256=None):
  """Reads shard `number` of a store directory, checking it.

  Args:
    path: store directory.
    number: shard number.
    record: the store's header (`read_header`): also check that the shard's
      input rows and images are shard `number`'s; None: its number only.
    arrays: read the arrays and check the sha256 (else only the info).
    sha256: the file's digest recorded in metadata.json (`file_digest`),
      checked instead of the contents' (it sees every byte), or None.

  Returns:
    (records.Store with float32 descriptors, or None without arrays; the info
    dict: number, input_rows, image_paths, metadata, mask_width, ...).

  Raises:
    FileNotFoundError: no such shard.
    ValueError: the file is truncated, corrupt (zip CRC, sha256), from
      another place (swapped or copied shards) or inconsistent; naming it.
  """
  file = shard_file(path, number)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{file} is missing')
  names = ('descriptors', 'valid', 'masks', 'grid') if arrays else ()
  source, damaged = file, None
  if sha256 is not None:
    with open(file, 'rb') as stream:
      source = io.BytesIO(stream.read())
    if hashlib.sha256(source.getvalue()).hexdigest() != sha256:
      damaged = f'{file} does not match its sha256 in metadata.json'
  try:
    with np.load(source) as npz:
      text = str(npz['info'])
      info = json.loads(text)
      stored = {name: npz[name] for name in names}  # zip CRCs checked
      contents = str(npz['sha256'])
  except Exception as error:  # zipfile and numpy raise many kinds on bad bytes
    raise ValueError(
      f'{damaged} (a damaged file)'
      if damaged
      else f'{file} is unreadable ({type(error).__name__}: {error})'
    ) from error
  if arrays and sha256 is None and contents != _digest(text, stored):
    damaged = f'{file} does not match the sha256 it was written with'
  if not isinstance(info, dict) or not isinstance(info.get('metadata'), dict):
    raise ValueError(f'{file} is unreadable (its info is not a shard info)')
  _check_place(file, number, info, record)  # a whole shard, misplaced
  if damaged:
    raise ValueError(f'{damaged} (a damaged file)')
  if not arrays:
    return None, info
  store = records.Store(
    stored['descriptors'].astype(np.float32),
    stored['valid'],
    np.unpackbits(stored['masks'], axis=-1, count=info['mask_width']).astype(
      bool
    ),
    stored['grid'],
    tuple(info['image_paths']),
    None,
    info['metadata'],
  )
  try:
    check_store(store)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{file} is inconsistent: {error}') from error
  return store, info
