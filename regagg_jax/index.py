"""Descriptor stores and fitted PCA-whitening on disk.

A store is a directory:

  metadata.json        format version, config hash, image list, skipped images,
                       shard table, the config used (JSON)
  shard_00000.npz      descriptors float32 (n, M, D_store), valid bool (n, M),
  shard_00001.npz      masks bool (n, M, H, W) bit-packed along W, grid int32
  ...                  (n, 2): one file per `shard_size` images, in image order
  reduction.npz        U^1 of eq. (4) (mean, components, scale) when the
                       descriptors are second-order (the store depends on it)

Region masks are padded to the largest feature grid of the store (H, W) and
`grid` holds each image's own (H, W). The whole directory is written under a
temporary name and renamed, so a reader never sees a half-written store; the
shard table is what later, resumable encoding (shards written as they finish)
extends.

Fitted whitening (`save_fit` / `load_fit`) is a directory with an orbax
checkpoint of {'reduction': U^1 or absent, 'whitening': U^2, s} and
fit.json (format version, config hash, what it was fitted on).
Search results (`write_results`) are <name>.json and <name>.csv.
"""

import csv
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple

import numpy as np
import orbax.checkpoint as ocp

from regagg_jax import pca

FORMAT_VERSION = 1
"""Version of the on-disk layout; readers refuse other versions."""


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
    metadata: JSON-serialisable dict: 'config_hash', 'config', 'skipped'
      ([path, reason] pairs) and whatever the encoder records.
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
  """Stable short hash of JSON-serialisable config sections.

  Args:
    sections: dict of plain values (e.g. config.features.to_dict(), ...).

  Returns:
    16 hex digits of the sha256 of the canonical JSON.
  """
  text = json.dumps(sections, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash_params(params):
  """Short sha256 of a PCAParams (or None) to tie stores to U^1."""
  if params is None:
    return 'none'
  digest = hashlib.sha256()
  for array in params:
    digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
  return digest.hexdigest()[:16]


def _check_store(store):
  num_images, num_regions = store.valid.shape
  expected = {'descriptors': store.descriptors.shape[:2],
              'masks': store.masks.shape[:2], 'grid': store.grid.shape[:1]}
  for name, shape in expected.items():
    if shape != (num_images, num_regions)[:len(shape)]:
      raise ValueError(f'store {name} has leading shape {shape}, expected '
                       f'{(num_images, num_regions)[:len(shape)]}')
  if len(store.image_paths) != num_images:
    raise ValueError(f'store has {len(store.image_paths)} paths for '
                     f'{num_images} images')
  if store.valid.dtype != np.bool_ or store.masks.dtype != np.bool_:
    raise TypeError('store valid and masks must be bool')


def _replace_directory(write, path):
  """Calls write(tmp_dir) then renames tmp_dir to path (replacing it)."""
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + '.tmp-', dir=parent)
  try:
    write(tmp)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=os.path.basename(path) + '.old-',
                             dir=parent)
      os.replace(path, os.path.join(old, 'store'))
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _save_params(path, params):
  np.savez(path, **params._asdict())


def _load_params(path):
  with np.load(path) as arrays:
    return pca.PCAParams(**{name: arrays[name] for name in pca.PCAParams._fields})


def save_store(path, store, *, shard_size=1000):
  """Writes a store directory atomically (temporary name, then rename).

  Args:
    path: directory to create or replace.
    store: Store.
    shard_size: images per shard file.
  """
  _check_store(store)
  num_images = store.valid.shape[0]
  starts = list(range(0, num_images, shard_size)) or [0]

  def write(directory):
    shards = []
    for number, start in enumerate(starts):
      stop = min(start + shard_size, num_images)
      name = f'shard_{number:05d}.npz'
      np.savez(os.path.join(directory, name),
               descriptors=store.descriptors[start:stop],
               valid=store.valid[start:stop],
               masks=np.packbits(store.masks[start:stop], axis=-1),
               grid=store.grid[start:stop])
      shards.append({'file': name, 'start': start, 'stop': stop})
    if store.reduction is not None:
      _save_params(os.path.join(directory, 'reduction.npz'), store.reduction)
    metadata = dict(store.metadata, format_version=FORMAT_VERSION,
                    image_paths=list(store.image_paths), shards=shards,
                    mask_width=int(store.masks.shape[-1]),
                    has_reduction=store.reduction is not None)
    with open(os.path.join(directory, 'metadata.json'), 'w') as stream:
      json.dump(metadata, stream, indent=1)

  _replace_directory(write, path)


def _read_metadata(path, name):
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{path} is not a regagg_jax directory: '
                            f'{name} is missing')
  with open(file) as stream:
    metadata = json.load(stream)
  if metadata.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{file} has format version '
                     f'{metadata.get("format_version")}, this code reads '
                     f'version {FORMAT_VERSION}; re-create it')
  return metadata


def load_store(path):
  """Reads a store directory written by `save_store`.

  Args:
    path: the store directory.

  Returns:
    Store identical to the one saved.

  Raises:
    FileNotFoundError: not a store directory.
    ValueError: another format version.
  """
  metadata = _read_metadata(path, 'metadata.json')
  parts = {'descriptors': [], 'valid': [], 'masks': [], 'grid': []}
  for shard in metadata.pop('shards'):
    with np.load(os.path.join(path, shard['file'])) as arrays:
      for name, chunks in parts.items():
        chunks.append(arrays[name])
  width = metadata.pop('mask_width')
  masks = np.unpackbits(np.concatenate(parts['masks']), axis=-1,
                        count=width).astype(bool)
  reduction = (_load_params(os.path.join(path, 'reduction.npz'))
               if metadata.pop('has_reduction') else None)
  image_paths = tuple(metadata.pop('image_paths'))
  metadata.pop('format_version')
  return Store(descriptors=np.concatenate(parts['descriptors']),
               valid=np.concatenate(parts['valid']), masks=masks,
               grid=np.concatenate(parts['grid']), image_paths=image_paths,
               reduction=reduction, metadata=metadata)


def save_fit(path, fit):
  """Writes fitted whitening (orbax) and its metadata, atomically.

  Args:
    path: directory to create or replace.
    fit: Fit.
  """
  tree = {'whitening': {k: np.asarray(v)
                        for k, v in fit.whitening._asdict().items()}}
  if fit.reduction is not None:
    tree['reduction'] = {k: np.asarray(v)
                         for k, v in fit.reduction._asdict().items()}

  def write(directory):
    ocp.PyTreeCheckpointer().save(os.path.join(directory, 'params'), tree)
    with open(os.path.join(directory, 'fit.json'), 'w') as stream:
      json.dump(dict(fit.metadata, format_version=FORMAT_VERSION), stream,
                indent=1)

  _replace_directory(write, path)


def load_fit(path):
  """Reads fitted whitening written by `save_fit`.

  Args:
    path: the directory.

  Returns:
    Fit with numpy float32 PCAParams.

  Raises:
    FileNotFoundError: not a fit directory.
    ValueError: another format version.
  """
  metadata = _read_metadata(path, 'fit.json')
  metadata.pop('format_version')
  tree = ocp.PyTreeCheckpointer().restore(
      os.path.join(os.path.abspath(path), 'params'))
  reduction = (pca.PCAParams(**tree['reduction'])
               if 'reduction' in tree else None)
  return Fit(reduction=reduction, whitening=pca.PCAParams(**tree['whitening']),
             metadata=metadata)


def _region_box(mask, size, *, stride=16):
  """[x1, y1, x2, y2] pixels covered by the cells of a bool (H, W) mask."""
  rows, cols = np.nonzero(mask)
  if not rows.size:
    return None
  return [int(cols.min() * stride), int(rows.min() * stride),
          int(min((cols.max() + 1) * stride, size[1])),
          int(min((rows.max() + 1) * stride, size[0]))]


def write_results(path, scores, ranks, best, queries, database, *, top_k):
  """Writes ranked lists as <path>.json and <path>.csv.

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
  """
  entries = []
  with open(path + '.csv', 'w', newline='') as stream:
    writer = csv.writer(stream)
    writer.writerow(['query', 'rank', 'image', 'score', 'region', 'x1', 'y1',
                     'x2', 'y2'])
    for q, query in enumerate(queries.image_paths):
      results = []
      for rank, row in enumerate(ranks[q, :top_k]):
        region = int(best[q, row])
        height, width = database.grid[row]
        box = _region_box(database.masks[row, region, :height, :width],
                          database.metadata['sizes'][row])
        results.append({'rank': rank, 'image': database.image_paths[row],
                        'score': float(scores[q, row]), 'region': region,
                        'region_box': box})
        writer.writerow([query, rank, database.image_paths[row],
                         f'{scores[q, row]:.6f}', region] + (box or [''] * 4))
      entries.append({'query': query, 'results': results})
  with open(path + '.json', 'w') as stream:
    json.dump(entries, stream, indent=1)
