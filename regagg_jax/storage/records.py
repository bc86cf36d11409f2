"""Descriptor stores and fits in memory, their hashes, fits and results.

  Store          region descriptors of N images (numpy, host)
  Fit            fitted PCA-whitening of a store's descriptors (eq. 6)
  hash_config    short sha256 of JSON-serialisable settings
  hash_params    short sha256 of a PCAParams (U^1, U^2)
  save_fit / load_fit  fitted whitening on disk
  write_results  ranked lists as <name>.json and <name>.csv

Every file is written whole (storage.atomic). A store on disk is a
sharded, resumable directory: see `store_format` (its files),
`store_writer` (build, finalize, save) and `store_reader` (load). Fitted
whitening (`save_fit` / `load_fit`) is a directory with an orbax checkpoint of
{'reduction': U^1 or absent, 'whitening': U^2, s} and fit.json (format
version, config hash, what it was fitted on, the hash of the arrays;
sealed with the sha256 of its contents, `seal`).
"""

import csv
import hashlib
import io
import json
import os
from typing import Any, NamedTuple

import numpy as np
import orbax.checkpoint as ocp

from regagg_jax.aggregation import pca
from regagg_jax.storage import atomic


FIT_FORMAT_VERSION = 1
"""Version of the fit layout (unchanged since version 1)."""


class Store(NamedTuple):
  """Region descriptors of N images, in memory (numpy, host).

  Attributes:
    descriptors: float32 (N, M, D) region descriptors (last region: whole
      image), l2-normalised, zeros where invalid.
    valid: bool (N, M) which regions exist.
    masks: bool (N, M, H, W) region masks on the feature grid, padded to the
      largest grid with False.
    grid: int32 (N, 2) each image's own feature-grid (H, W).
    image_paths: the N image paths, in row order.
    reduction: U^1 of eq. (4) the descriptors were computed with, or None.
    metadata: JSON-serialisable dict: 'config_hash', 'config', 'rows' and
      'sizes' (one per image), 'skipped' ([path, reason] pairs), ...
  """

  descriptors: np.ndarray
  valid: np.ndarray
  masks: np.ndarray
  grid: np.ndarray
  image_paths: tuple
  reduction: Any
  metadata: dict


class Fit(NamedTuple):
  """Fitted projection of a store's descriptors (eq. 6).

  Attributes:
    reduction: U^1 of eq. (4) the fitting descriptors were computed with, or
      None (first-order methods).
    whitening: PCAParams U^2 and 1/s of eq. (6).
    metadata: JSON-serialisable dict: 'config_hash', 'fitted_on', ...
  """

  reduction: Any
  whitening: pca.PCAParams
  metadata: dict


def hash_config(sections):
  """16 hex digits of the sha256 of JSON-serialisable values (canonical)."""
  text = json.dumps(sections, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash_params(params):
  """Short sha256 of a PCAParams (or 'none') to tie stores to U^1 / U^2."""
  if params is None:
    return 'none'
  digest = hashlib.sha256()
  for array in params:
    digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
  return digest.hexdigest()[:16]


def _fit_hash(reduction, whitening):
  """The checksum of a fit's arrays kept in its fit.json."""
  return f'{hash_params(reduction)}-{hash_params(whitening)}'


def save_fit(path, fit):
  """Writes fitted whitening (orbax) and its metadata, atomically.

  Args:
    path: directory to create or replace.
    fit: Fit.
  """
  tree = {
    'whitening': {k: np.asarray(v) for k, v in fit.whitening._asdict().items()}
  }
  if fit.reduction is not None:
    tree['reduction'] = {
      k: np.asarray(v) for k, v in fit.reduction._asdict().items()
    }

  def write(directory):
    ocp.PyTreeCheckpointer().save(os.path.join(directory, 'params'), tree)
    with open(os.path.join(directory, 'fit.json'), 'w') as stream:
      json.dump(
        atomic.seal(
          dict(
            fit.metadata,
            format_version=FIT_FORMAT_VERSION,
            params_hash=_fit_hash(fit.reduction, fit.whitening),
          )
        ),
        stream,
        indent=1,
      )

  atomic.replace_directory(write, path)


def load_fit(path):
  """Reads fitted whitening written by `save_fit`.

  Args:
    path: the directory.

  Returns:
    Fit with numpy float32 PCAParams.

  Raises:
    FileNotFoundError: not a fit directory.
    ValueError: another format version, or a corrupt or damaged file
      (naming it and how to recover).
  """
  metadata = atomic.read_json(path, 'fit.json', FIT_FORMAT_VERSION, sealed=True)
  metadata.pop('format_version')
  try:
    tree = ocp.PyTreeCheckpointer().restore(
      os.path.join(os.path.abspath(path), 'params')
    )
  except Exception as error:  # orbax / tensorstore raise many kinds
    raise ValueError(
      f'{path}/params is unreadable ({type(error).__name__}: '
      f'{str(error)[:200]}); delete {path} and run the same command again '
      'to fit it anew'
    ) from error
  reduction = (
    pca.PCAParams(**tree['reduction']) if 'reduction' in tree else None
  )
  whitening = pca.PCAParams(**tree['whitening'])
  if metadata.pop('params_hash', None) != _fit_hash(reduction, whitening):
    raise ValueError(
      f'{path}/params does not match the hash in its fit.json (a damaged '
      f'file); delete {path} and run the same command again to fit it anew'
    )
  return Fit(
    reduction=reduction,
    whitening=whitening,
    metadata=metadata,
  )


def _region_box(mask, size, *, stride=16):
  """[x1, y1, x2, y2] pixels covered by the cells of a bool (H, W) mask."""
  rows, cols = np.nonzero(mask)
  if not rows.size:
    return None
  return [
    int(cols.min() * stride),
    int(rows.min() * stride),
    int(min((cols.max() + 1) * stride, size[1])),
    int(min((rows.max() + 1) * stride, size[0])),
  ]


def write_results(
  path, scores, ranks, best, queries, database, *, top_k, header=None
):
  """Writes ranked lists as <path>.json and <path>.csv, each atomically.

  The JSON is {**header, 'queries': [{'query', 'results'}, ...]}.

  Each result has its score and the database region best matched to the
  query (eq. 7): its index m' and its box in pixels of the encoded image
  (longer side capped at features.max_size; conv5_4 cells are 16 px).

  Args:
    path: output path without extension.
    scores: float32 (Q, N) similarities.
    ranks: int (Q, N) database rows, best first.
    best: int32 (Q, N) best-matched database region.
    queries: Store of the Q queries.
    database: Store of the N database images.
    top_k: results written per query.
    header: dict of what produced the results (e.g. the resolved config),
      recorded before them in the JSON.
  """
  entries, table = [], io.StringIO(newline='')
  writer = csv.writer(table)
  writer.writerow(
    ['query', 'rank', 'image', 'score', 'region', 'x1', 'y1', 'x2', 'y2']
  )
  for q, query in enumerate(queries.image_paths):
    results = []
    for rank, row in enumerate(ranks[q, :top_k]):
      region = int(best[q, row])
      height, width = database.grid[row]
      box = _region_box(
        database.masks[row, region, :height, :width],
        database.metadata['sizes'][row],
      )
      results.append(
        {
          'rank': rank,
          'image': database.image_paths[row],
          'score': float(scores[q, row]),
          'region': region,
          'region_box': box,
        }
      )
      writer.writerow(
        [
          query,
          rank,
          database.image_paths[row],
          f'{scores[q, row]:.6f}',
          region,
        ]
        + (box or [''] * 4)
      )
    entries.append({'query': query, 'results': results})
  atomic.atomic_write(
    path + '.csv', lambda stream: stream.write(table.getvalue().encode())
  )
  atomic.write_json(path + '.json', {**(header or {}), 'queries': entries})
