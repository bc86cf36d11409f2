"""Region graphs of diffusion on disk: built shard by shard, resumable.

A graph directory (kept beside a store's fits, named by the store's hash)
holds:

  knn_NNNNN.npz    the k nearest regions of shard NNNNN's slots and their
                   similarities (stage 1; removed once the graph is done)
  graph_NNNNN.npz  the reciprocal neighbours and affinities of its slots
  metadata.json    format version, shard count and the sha256 of every
                   graph shard; written last, so it marks a finished graph

Every file is written atomically (atomic.atomic_write): a run killed at
any point leaves whole shards only, and `build_graph` run again searches
only the kNN shards that are missing or unreadable. `load_graph` checks
every shard against its sha256 and names a damaged one.

Public: FORMAT_VERSION, build_graph, load_graph.
"""

import glob
import hashlib
import os

from absl import logging
import numpy as np

from regagg_jax.storage import provenance
from regagg_jax.storage import atomic

FORMAT_VERSION = 1
"""Version of the graph layout; `load_graph` refuses others."""


def _sha256(file):
  digest = hashlib.sha256()
  with open(file, 'rb') as stream:
    for block in iter(lambda: stream.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _save_arrays(file, **arrays):
  atomic.atomic_write(file, lambda stream: np.savez(stream, **arrays))


def _read_arrays(file, names):
  """The named arrays of an .npz, or None when it is missing or unreadable."""
  if not os.path.isfile(file):
    return None
  try:
    with np.load(file) as arrays:
      return tuple(arrays[name] for name in names)
  except Exception as error:  # zipfile and numpy raise many kinds on bad bytes
    logging.warning('searching %s again: %s', file, error)
    return None


def build_graph(
  path, nearest, affinity, *, num_slots, shard_rows=100_000, metadata=None
):
  """Builds (or finishes) the graph directory `path`; returns what
  `load_graph` does.

  Args:
    path: the graph directory (created).
    nearest: (start, stop) -> int32 (stop - start, k) neighbour slots and
      float32 similarities of slots [start, stop) (graph.nearest_regions).
    affinity: (neighbours (R, k), similarities (R, k)) -> the graph's
      neighbours and weights (graph.mutual_affinity).
    num_slots: R = N * M.
    shard_rows: slots per shard (the resume unit).
    metadata: JSON-serialisable fields recorded in metadata.json (k, gamma,
      store_hash, ...); a finished graph with other values is refused.

  Returns:
    (int32 (R, k) neighbours, float32 (R, k) weights, metadata dict).

  Raises:
    ValueError: a finished graph at `path` made with other settings.
  """
  metadata = dict(metadata or {}, num_slots=num_slots, shard_rows=shard_rows)
  if os.path.isfile(os.path.join(path, 'metadata.json')):
    return load_graph(path, expected=metadata)
  os.makedirs(path, exist_ok=True)
  num_shards = -(-num_slots // shard_rows)
  knn = None  # (R, k) tables, filled shard by shard (no second copy)
  for number in range(num_shards):
    file = os.path.join(path, f'knn_{number:05d}.npz')
    rows = slice(number * shard_rows, min((number + 1) * shard_rows, num_slots))
    part = _read_arrays(file, ('neighbours', 'similarities'))
    if part is None:
      part = nearest(rows.start, rows.stop)
      _save_arrays(file, neighbours=part[0], similarities=part[1])
      logging.info('graph %s: kNN shard %d / %d', path, number + 1, num_shards)
    if knn is None:
      knn = tuple(np.empty((num_slots,) + p.shape[1:], p.dtype) for p in part)
    knn[0][rows], knn[1][rows] = part
  neighbours, weights = affinity(*knn)
  del knn
  checksums = []
  for number in range(num_shards):
    file = os.path.join(path, f'graph_{number:05d}.npz')
    rows = slice(number * shard_rows, (number + 1) * shard_rows)
    _save_arrays(file, neighbours=neighbours[rows], weights=weights[rows])
    checksums.append(_sha256(file))
  atomic.write_json(
    os.path.join(path, 'metadata.json'),
    dict(
      metadata,
      format_version=FORMAT_VERSION,
      num_shards=num_shards,
      sha256=checksums,
    ),
  )
  for leftover in glob.glob(os.path.join(path, 'knn_*.npz')):
    os.remove(leftover)
  return neighbours, weights, metadata


def load_graph(path, *, expected=None):
  """Reads a finished graph directory, checking every shard's sha256.

  Args:
    path: the directory.
    expected: metadata values it must have (e.g. k, gamma, store_hash).

  Returns:
    (int32 (R, k) neighbours, float32 (R, k) weights, metadata dict).

  Raises:
    FileNotFoundError: no finished graph at `path`.
    ValueError: another format version, stale settings, or a damaged shard
      (named, with the command that rebuilds it).
  """
  value = atomic.read_json(path, 'metadata.json', FORMAT_VERSION)
  provenance.check_stale(
    f'the region graph {path}', value, expected or {}, 'build it again'
  )
  advice = f'delete {path} and run the same command again to rebuild it'
  parts = []
  for number, checksum in enumerate(value['sha256']):
    file = os.path.join(path, f'graph_{number:05d}.npz')
    if not os.path.isfile(file) or _sha256(file) != checksum:
      raise ValueError(
        f'{file} is missing or does not match its sha256 in '
        f'{os.path.join(path, "metadata.json")} (a damaged file); {advice}'
      )
    parts.append(_read_arrays(file, ('neighbours', 'weights')))
  metadata = {
    k: v
    for k, v in value.items()
    if k not in ('format_version', 'num_shards', 'sha256')
  }
  return (
    np.concatenate([p[0] for p in parts]),
    np.concatenate([p[1] for p in parts]),
    metadata,
  )
