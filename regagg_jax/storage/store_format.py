"""The files of a descriptor store directory (format version 2).

  FORMAT_VERSION  the layout's version; readers refuse others
  DTYPES          descriptor storage dtypes
  check_store     refuses a Store whose arrays and paths disagree
  read_header     header.json of a store directory
  shard_file      the file of shard n
  num_shards      shards of a store of N input rows
  write_shard     a Store -> shard n, atomically
  read_shard      shard n -> a Store (and its info)

A store directory holds:

  header.json      format version, the caller's `header` (config_hash,
                   whitening_hash, inputs_hash, ...), the input image paths,
                   shard_size, descriptor dtype and the U^1 hash
  shard_00000.npz  input rows [n * shard_size, (n + 1) * shard_size): the
  shard_00001.npz  readable ones' descriptors (n, M, D) in the store dtype,
  ...              valid bool (n, M), masks bool (n, M, H_s, W_s) bit-packed
                   along W, grid int32 (n, 2), and 'info' (JSON: their
                   paths, metadata, mask width and the fingerprints of
                   all the shard's input rows, storage.fingerprints)
  reduction.npz    U^1 of eq. (4) (second-order descriptors depend on it)
  metadata.json    written last (store_io.finalize_store): the merged
                   metadata; a store without it is unfinished, not loaded

Every file is written to a temporary name and renamed (records.atomic_write),
so a run killed at any point leaves whole files only. `sharded_store`
builds, finishes, loads and saves stores from these pieces.
"""

import json
import os
import zipfile

import numpy as np

from regagg_jax.storage import records


FORMAT_VERSION = 2
"""Version of the store layout; readers refuse other versions."""

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
    ValueError: another format version (an older layout included).
  """
  if not os.path.isfile(os.path.join(path, 'header.json')) and os.path.isfile(
    os.path.join(path, 'metadata.json')
  ):  # an older layout
    records.read_json(path, 'metadata.json', FORMAT_VERSION)
  return records.read_json(path, 'header.json', FORMAT_VERSION)


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


def write_shard(path, number, part, dtype, *, fingerprints=None):
  """Writes an records.Store as shard `number`, atomically.

  Args:
    path: store directory.
    number: shard number.
    part: records.Store of the shard's readable rows.
    dtype: descriptor storage, one of DTYPES.
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
      'image_paths': [str(p) for p in part.image_paths],
      'metadata': part.metadata,
      'mask_width': int(part.masks.shape[-1]),
      **({} if fingerprints is None else {'fingerprints': fingerprints}),
    }
  )
  records.atomic_write(
    shard_file(path, number),
    lambda stream: np.savez(
      stream,
      descriptors=descriptors,
      valid=part.valid,
      masks=np.packbits(part.masks, axis=-1),
      grid=part.grid,
      info=np.array(info),
    ),
  )


def read_shard(path, number, *, arrays=True):
  """Reads shard `number` of a store directory.

  Args:
    path: store directory.
    number: shard number.
    arrays: read the arrays (else only the info, checking less).

  Returns:
    (records.Store with float32 descriptors, or None without arrays; the info
    dict: image_paths, metadata, mask_width).

  Raises:
    FileNotFoundError: no such shard.
    ValueError: the file is truncated, corrupt (zip CRC) or inconsistent.
  """
  file = shard_file(path, number)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{file} is missing')
  try:
    with np.load(file) as npz:
      info = json.loads(str(npz['info']))
      if not arrays:
        return None, info
      store = records.Store(
        npz['descriptors'].astype(np.float32),
        npz['valid'],
        np.unpackbits(npz['masks'], axis=-1, count=info['mask_width']).astype(
          bool
        ),
        npz['grid'],
        tuple(info['image_paths']),
        None,
        info['metadata'],
      )
    check_store(store)
  except (
    OSError,
    EOFError,
    KeyError,
    TypeError,
    ValueError,
    zipfile.BadZipFile,
  ) as error:
    raise ValueError(
      f'{file} is unreadable ({type(error).__name__}: {error})'
    ) from error
  return store, info
