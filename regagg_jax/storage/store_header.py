"""What a store on disk is made with: its header, and what belongs to it.

  store_record  the header.json contents of a store (settings, images,
                shard size, dtype, U^1 hash)
  open_store    creates a store directory and its header (and U^1), or
                checks the one there matches
  check_part    refuses encoded rows that do not belong to the store

`store_format` reads and writes the files (header.json, shards);
`store_writer` builds, finishes and saves stores with these. A store is
reopened only with the settings it was made with: `open_store` refuses
another store, naming the differing fields (provenance.differences).
"""

import json
import os

import numpy as np

from regagg_jax.storage import atomic
from regagg_jax.storage import provenance
from regagg_jax.storage import records
from regagg_jax.storage import store_format


def _normalised(value):
  """value as JSON reads it back (tuples as lists, int keys as str)."""
  return json.loads(json.dumps(value))


def store_record(image_paths, header, shard_size, dtype, reduction):
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


def open_store(path, record, reduction):
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


def check_part(part, rows, record, number):
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
