"""Descriptor stores on disk, read: finished stores checked and loaded.

  load_store      a finished store -> records.Store (float32, padded masks)
  load_reduction  U^1 of eq. (4) kept in a store, finished or not

Stores are written by `store_writer` in `store_format`'s layout. Every
shard is checked on load (its sha256 in metadata.json, its number, rows
and images, the fingerprints of its images), and masks are padded to the
store's largest grid.
"""

import os

import numpy as np

from regagg_jax.aggregation import pca
from regagg_jax.storage import atomic
from regagg_jax.storage import fingerprints
from regagg_jax.storage import provenance
from regagg_jax.storage import records
from regagg_jax.storage import store_format


def load_reduction(path):
  """U^1 of eq. (4) kept in a store directory, finished or not.

  Args:
    path: store directory (store_writer.build_store).

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
  """Reads a finished store (store_writer.build_store, save_store).

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
