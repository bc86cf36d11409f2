"""Descriptor stores and fitted PCA-whitening on disk.

A store is a directory (format version 2):

  header.json      format version, the caller's `header` (config_hash,
                   whitening_hash, inputs_hash, ...), the input image paths,
                   shard_size, descriptor dtype and the U^1 hash
  shard_00000.npz  input rows [n * shard_size, (n + 1) * shard_size): the
  shard_00001.npz  readable ones' descriptors (n, M, D) in the store dtype,
  ...              valid bool (n, M), masks bool (n, M, H_s, W_s) bit-packed
                   along W, grid int32 (n, 2), and 'info' (JSON: their
                   paths, metadata and mask width)
  reduction.npz    U^1 of eq. (4) (second-order descriptors depend on it)
  metadata.json    written last (`finalize_store`): the merged metadata; a
                   store without it is unfinished and is not loaded

Every file is written to a temporary name and renamed, so a run killed at
any point leaves whole shards only; `build_store` run again (by any number
of processes, each on its `shards`) encodes only the shards that are
missing or unreadable. Masks are padded to the store's largest grid on load.

Fitted whitening (`save_fit` / `load_fit`) is a directory with an orbax
checkpoint of {'reduction': U^1 or absent, 'whitening': U^2, s} and
fit.json (format version, config hash, what it was fitted on).
Search results (`write_results`) are <name>.json and <name>.csv.
"""

import csv
import glob
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple
import uuid
import zipfile

from absl import logging
import numpy as np
import orbax.checkpoint as ocp

from regagg_jax import pca

FORMAT_VERSION = 2
"""Version of the store layout; readers refuse other versions."""

FIT_FORMAT_VERSION = 1
"""Version of the fit layout (unchanged since version 1)."""

DTYPES = ('float32', 'float16')
"""Descriptor storage dtypes; stores always load as float32."""

_ROW_KEYS = ('rows', 'sizes', 'skipped')  # metadata lists kept per shard


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


def _atomic_write(file, write):
  """write(binary stream) to a temporary file, fsync, rename it to `file`."""
  tmp = f'{file}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'xb') as stream:  # mode 0666 less the umask
      write(stream)
      stream.flush()
      os.fsync(stream.fileno())
    os.replace(tmp, file)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  handle = os.open(os.path.dirname(file), os.O_RDONLY)  # persist the rename
  os.fsync(handle)
  os.close(handle)


def _write_json(file, value):
  text = json.dumps(value, indent=1).encode()  # TypeError before any write
  _atomic_write(file, lambda stream: stream.write(text))


def _read_json(path, name, version):
  """A JSON file of a store / fit directory, refusing other versions."""
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{path} is not a regagg_jax directory: '
                            f'{name} is missing')
  with open(file) as stream:
    value = json.load(stream)
  if value.get('format_version') != version:
    raise ValueError(f'{file} has format version '
                     f'{value.get("format_version")}, this code reads '
                     f'version {version}; re-create it')
  return value


def _read_header(path):
  if not os.path.isfile(os.path.join(path, 'header.json')) and os.path.isfile(
      os.path.join(path, 'metadata.json')):  # an older layout
    _read_json(path, 'metadata.json', FORMAT_VERSION)
  return _read_json(path, 'header.json', FORMAT_VERSION)


def _shard_file(path, number):
  return os.path.join(path, f'shard_{number:05d}.npz')


def _num_shards(num_images, shard_size):
  if not isinstance(shard_size, int) or shard_size < 1:
    raise ValueError(f'shard_size must be a positive int, got {shard_size!r}')
  return max(1, -(-num_images // shard_size))


def _write_shard(path, number, part, dtype):
  """Writes a Store as shard `number` (descriptors cast to `dtype`)."""
  _check_store(part)
  with np.errstate(over='ignore'):
    descriptors = part.descriptors.astype(dtype)
  if not np.array_equal(np.isfinite(descriptors),
                        np.isfinite(part.descriptors)):
    raise ValueError(f'shard {number}: descriptors overflow {dtype}')
  info = json.dumps({'image_paths': [str(p) for p in part.image_paths],
                     'metadata': part.metadata,
                     'mask_width': int(part.masks.shape[-1])})
  _atomic_write(_shard_file(path, number), lambda stream: np.savez(
      stream, descriptors=descriptors, valid=part.valid,
      masks=np.packbits(part.masks, axis=-1), grid=part.grid,
      info=np.array(info)))


def _read_shard(path, number, *, arrays=True):
  """(Store of a shard with float32 descriptors or None, its info dict).

  Raises:
    FileNotFoundError: no such shard.
    ValueError: the file is truncated, corrupt (zip CRC) or inconsistent.
  """
  file = _shard_file(path, number)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{file} is missing')
  try:
    with np.load(file) as npz:
      info = json.loads(str(npz['info']))
      if not arrays:
        return None, info
      store = Store(
          npz['descriptors'].astype(np.float32), npz['valid'],
          np.unpackbits(npz['masks'], axis=-1,
                        count=info['mask_width']).astype(bool),
          npz['grid'], tuple(info['image_paths']), None, info['metadata'])
    _check_store(store)
  except (OSError, EOFError, KeyError, TypeError, ValueError,
          zipfile.BadZipFile) as error:
    raise ValueError(f'{file} is unreadable ({type(error).__name__}: '
                     f'{error})') from error
  return store, info


def _normalised(value):
  return json.loads(json.dumps(value))


def _differences(stored, given, prefix=''):
  """'field: stored X, given Y' for every differing (nested) field."""
  lines = []
  for key in sorted(set(stored) | set(given)):
    old, new = stored.get(key), given.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      lines += _differences(old, new, f'{prefix}{key}.')
    elif key == 'image_paths' and old != new:
      first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b),
                   min(len(old), len(new)))
      lines.append(f'image_paths: {len(old)} stored, {len(new)} given, '
                   f'first difference at row {first}')
    elif old != new:
      lines.append(f'{prefix}{key}: stored {old!r:.80}, given {new!r:.80}')
  return lines


def _record(image_paths, header, shard_size, dtype, reduction):
  """The header.json contents of a store."""
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
  return _normalised({
      'format_version': FORMAT_VERSION, 'header': header,
      'image_paths': [str(p) for p in image_paths], 'shard_size': shard_size,
      'dtype': dtype, 'reduction_hash': hash_params(reduction)})


def _open_store(path, record, reduction):
  """Creates the store directory and header, or checks it matches."""
  os.makedirs(path, exist_ok=True)
  if os.path.isfile(os.path.join(path, 'header.json')) or os.path.isfile(
      os.path.join(path, 'metadata.json')):
    lines = _differences(_read_header(path), record)
    if lines:
      raise ValueError(f'{path} holds a store made with other settings ('
                       f'{"; ".join(lines)}); it is not extended: use '
                       'another path or delete it')
  else:
    _write_json(os.path.join(path, 'header.json'), record)
  if reduction is not None and not os.path.isfile(
      os.path.join(path, 'reduction.npz')):
    _atomic_write(os.path.join(path, 'reduction.npz'), lambda stream: np.savez(
        stream, **{k: np.asarray(v) for k, v in reduction._asdict().items()}))


def _check_part(part, rows, record, number):
  """Refuses an encode_part result that does not belong to the store."""
  where = f'encode_part for shard {number} (rows {rows[:1]}..{rows[-1:]})'
  part_rows = part.metadata.get('rows', rows[:len(part.image_paths)])
  if len(part_rows) != len(part.image_paths) or not set(part_rows) <= set(rows):
    raise ValueError(f'{where} returned rows {part_rows}')
  if [str(p) for p in part.image_paths] != [
      record['image_paths'][r] for r in part_rows]:
    raise ValueError(f'{where} returned other images than its rows')
  header = record['header']
  metadata = _normalised(part.metadata)
  for key in set(header) & set(metadata):
    if metadata[key] != header[key]:
      raise ValueError(f'{where} returned {key} {metadata[key]!r:.80}, '
                       f'the store header has {header[key]!r:.80}')
  if metadata.get('whitening_hash', 'none') != 'none' and (
      'whitening_hash' not in header):
    raise ValueError(f'{where} returned whitened descriptors: record their '
                     'whitening_hash in the store header')
  if part.reduction is not None and (
      hash_params(part.reduction) != record['reduction_hash']):
    raise ValueError(f'{where} used another U^1 (eq. 4) than build_store\'s '
                     'reduction')


def build_store(path, encode_part, *, image_paths, header, shard_size=1000,
                dtype='float32', shards=None, reduction=None):
  """Encodes the missing shards of a store: resumable and crash-safe.

  Shard n holds input rows [n * shard_size, min((n + 1) * shard_size, N)).
  A shard file that is missing or unreadable (logged) is encoded again with
  encode_part(rows) and written atomically; finished shards are kept. Each
  existing shard of `shards` is read once (zip CRCs, shapes) to check it.

  Args:
    path: store directory; created, or checked against these arguments.
    encode_part: list of int rows -> Store of their readable images (its
      metadata 'rows' absolute, e.g. encoder.encode_rows).
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
  num_shards = _num_shards(len(image_paths), shard_size)
  wanted = range(num_shards) if shards is None else sorted(set(shards))
  if any(not 0 <= n < num_shards for n in wanted):
    raise ValueError(f'shards must be in [0, {num_shards}), got {shards}')
  record = _record(image_paths, header, shard_size, dtype, reduction)
  if header.get('reduction_hash', record['reduction_hash']) != (
      record['reduction_hash']):
    raise ValueError('header reduction_hash is not the hash of reduction')
  _open_store(path, record, reduction)
  for number in wanted:
    try:
      _read_shard(path, number)
      continue
    except FileNotFoundError:
      pass
    except ValueError as error:
      logging.warning('encoding an unreadable shard again: %s', error)
    if os.path.isfile(os.path.join(path, 'metadata.json')):
      os.remove(os.path.join(path, 'metadata.json'))  # unfinished again
    rows = list(range(number * shard_size,
                      min((number + 1) * shard_size, len(image_paths))))
    logging.info('encoding shard %d of %d of %s', number, num_shards, path)
    part = encode_part(rows)
    _check_part(part, rows, record, number)
    _write_shard(path, number, part, dtype)
  if any(not os.path.isfile(_shard_file(path, n)) for n in range(num_shards)):
    return False
  finalize_store(path)
  return True


def finalize_store(path):
  """Writes metadata.json once every shard is written (atomically).

  Args:
    path: store directory.

  Raises:
    ValueError: naming the missing or unreadable shards.
  """
  path = os.fspath(path)
  record = _read_header(path)
  num_shards = _num_shards(len(record['image_paths']), record['shard_size'])
  infos, problems = [], []
  for number in range(num_shards):
    try:
      infos.append(_read_shard(path, number, arrays=False)[1])
    except (FileNotFoundError, ValueError):
      problems.append(number)
  if problems:
    raise ValueError(f'{path} cannot be finalised: {len(problems)} of '
                     f'{num_shards} shards are missing or unreadable '
                     f'({problems[:10]}); run build_store again')
  metadata = dict(record['header'])
  for number, info in enumerate(infos):
    for key, value in info['metadata'].items():
      if key in _ROW_KEYS:
        metadata.setdefault(key, []).extend(value)
      elif metadata.setdefault(key, value) != value:
        raise ValueError(f'{path}: shard {number} has {key} {value!r}, '
                         f'other shards {metadata[key]!r}')
  _write_json(os.path.join(path, 'metadata.json'), {
      'format_version': FORMAT_VERSION, 'metadata': metadata,
      'num_images': sum(len(i['image_paths']) for i in infos)})
  for leftover in glob.glob(os.path.join(path, 'shard_*.tmp-*')):
    try:  # of killed runs (no shard is being written: all are there)
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
  record = _read_header(path)
  if record['reduction_hash'] == 'none':
    return None
  with np.load(os.path.join(path, 'reduction.npz')) as arrays:
    reduction = pca.PCAParams(**{k: arrays[k] for k in pca.PCAParams._fields})
  if hash_params(reduction) != record['reduction_hash']:
    raise ValueError(f'{path}/reduction.npz does not match its header hash')
  return reduction


def load_store(path):
  """Reads a finished store (see `build_store`, `save_store`).

  Args:
    path: the store directory.

  Returns:
    Store with float32 descriptors (float16 stores cast up), masks padded
    to the largest grid.

  Raises:
    FileNotFoundError: not a store directory.
    ValueError: another format version, an unfinished store (how many
      shards are missing), or an unreadable shard (naming it).
  """
  path = os.fspath(path)
  record = _read_header(path)
  num_shards = _num_shards(len(record['image_paths']), record['shard_size'])
  if not os.path.isfile(os.path.join(path, 'metadata.json')):
    missing = [n for n in range(num_shards)
               if not os.path.isfile(_shard_file(path, n))]
    raise ValueError(f'{path} is an unfinished store: {len(missing)} of '
                     f'{num_shards} shards missing {missing[:10]}; ' + (
                         'resume the encode (build_store with the same '
                         'arguments)' if missing else 'call finalize_store'))
  metadata = _read_json(path, 'metadata.json', FORMAT_VERSION)['metadata']
  try:
    parts = [_read_shard(path, n)[0] for n in range(num_shards)]
  except (FileNotFoundError, ValueError) as error:
    raise ValueError(f'{error}; run build_store again to re-encode it') from error
  parts = [p for p in parts if len(p.valid)] or parts[:1]
  height = max(p.masks.shape[2] for p in parts)
  width = max(p.masks.shape[3] for p in parts)
  masks = [np.pad(p.masks, ((0, 0), (0, 0), (0, height - p.masks.shape[2]),
                            (0, width - p.masks.shape[3]))) for p in parts]
  reduction = load_reduction(path)
  return Store(
      descriptors=np.concatenate([p.descriptors for p in parts]),
      valid=np.concatenate([p.valid for p in parts]),
      masks=np.concatenate(masks), grid=np.concatenate([p.grid for p in parts]),
      image_paths=tuple(i for p in parts for i in p.image_paths),
      reduction=reduction, metadata=metadata)


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


def save_store(path, store, *, shard_size=1000, dtype='float32'):
  """Writes an in-memory Store in the `build_store` format, atomically.

  Args:
    path: directory to create or replace.
    store: Store.
    shard_size: images per shard file.
    dtype: descriptor storage, 'float32' or 'float16'.

  Raises:
    ValueError, TypeError: an inconsistent store or bad arguments (the
      previous store at path, if any, is kept).
  """
  _check_store(store)
  header = {k: v for k, v in store.metadata.items() if k not in _ROW_KEYS}
  record = _record(store.image_paths, header, shard_size, dtype,
                   store.reduction)

  def write(directory):
    _open_store(directory, record, store.reduction)
    for number in range(_num_shards(len(store.image_paths), shard_size)):
      rows = slice(number * shard_size, (number + 1) * shard_size)
      metadata = dict(header, **{k: store.metadata[k][rows] for k in (
          'rows', 'sizes') if k in store.metadata})
      if 'skipped' in store.metadata:  # all in shard 0
        metadata['skipped'] = store.metadata['skipped'] if not number else []
      _write_shard(directory, number, Store(
          store.descriptors[rows], store.valid[rows], store.masks[rows],
          store.grid[rows], store.image_paths[rows], None, metadata), dtype)
    finalize_store(directory)

  _replace_directory(write, path)


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
      json.dump(dict(fit.metadata, format_version=FIT_FORMAT_VERSION), stream,
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
  metadata = _read_json(path, "fit.json", FIT_FORMAT_VERSION)
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
