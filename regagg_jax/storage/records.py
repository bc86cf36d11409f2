"""Descriptor stores and fits in memory, their hashes, and small files.

  Store          region descriptors of N images (numpy, host)
  Fit            fitted PCA-whitening of a store's descriptors (eq. 6)
  hash_config    short sha256 of JSON-serialisable settings
  hash_params    short sha256 of a PCAParams (U^1, U^2)
  atomic_write   a file written to a temporary name, fsynced and renamed
  write_json     a JSON file, atomically
  seal           a JSON record with the sha256 of its contents
  read_json      a versioned (and sealed) JSON file of a store / fit directory
  replace_directory  a directory written aside, then swapped in
  KILL_AT        fault injection: SIGKILL at a chosen write (tests)
  save_fit / load_fit  fitted whitening on disk
  write_results  ranked lists as <name>.json and <name>.csv

A store on disk is a sharded, resumable directory: see `store_format` (its
files) and `sharded_store` (build, finalize, load, save). Fitted whitening
(`save_fit` / `load_fit`) is a directory with an orbax checkpoint of
{'reduction': U^1 or absent, 'whitening': U^2, s} and fit.json (format
version, config hash, what it was fitted on, the hash of the arrays;
sealed with the sha256 of its contents, `seal`).
"""

import collections
import csv
import fnmatch
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import tempfile
from typing import Any, NamedTuple
import uuid

import numpy as np
import orbax.checkpoint as ocp

from regagg_jax.aggregation import pca


FIT_FORMAT_VERSION = 1
"""Version of the fit layout (unchanged since version 1)."""

KILL_AT = 'REGAGG_KILL_AT'
"""Fault injection for crash tests: with REGAGG_KILL_AT=<pattern>[:<n>] in
the environment, the n-th (default 1st) atomic_write / replace_directory of
this process whose file name (basename) matches the fnmatch pattern SIGKILLs
the process after its temporary is written, before the rename. Unset: one
dict lookup per write."""

_kills = collections.Counter()  # writes matching each KILL_AT pattern


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


def _temporary_tag(kind):
  """'<kind><host>-<pid>-': names this process's temporaries."""
  return f'{kind}{socket.gethostname()}-{os.getpid()}-'


def _remove_leftovers(directory):
  """Removes the temporaries in `directory` left by killed processes of
  this host (their pid is gone): of any file, since a rerun may write
  under another name (results never overwrite). A live writer's are kept,
  and so are other hosts' (their pids cannot be checked here)."""
  host = socket.gethostname()
  for name in os.listdir(directory):
    for kind in ('.tmp-', '.old-'):
      _, found, rest = name.partition(f'{kind}{host}-')
      pid = rest.split('-')[0]
      if not found or not pid.isdigit() or _is_running(int(pid)):
        continue
      leftover = os.path.join(directory, name)
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      else:
        try:
          os.remove(leftover)
        except FileNotFoundError:  # removed by another process
          pass


def _is_running(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _kill_if_asked(file):
  """SIGKILLs this process at the write KILL_AT names (see KILL_AT)."""
  rule = os.environ.get(KILL_AT)
  if not rule:
    return
  pattern, _, count = rule.partition(':')
  if fnmatch.fnmatch(os.path.basename(file), pattern):
    _kills[pattern] += 1
    if _kills[pattern] == int(count or 1):
      os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(file, write):
  """write(binary stream) to a temporary file, fsync, rename it to `file`.

  A reader never sees a partial file: a run killed at any point leaves the
  old file (or none) and at most a `<file>.tmp-<host>-<pid>-*` leftover,
  removed by the next write into the same directory once that pid is gone
  (a live writer's temporaries are kept).

  Args:
    file: destination path (its directory exists).
    write: callable writing the contents to a binary stream.
  """
  tmp = f'{file}{_temporary_tag(".tmp-")}{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'xb') as stream:  # mode 0666 less the umask
      write(stream)
      stream.flush()
      os.fsync(stream.fileno())
    _kill_if_asked(file)
    os.replace(tmp, file)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  directory = os.path.dirname(os.path.abspath(file))
  handle = os.open(directory, os.O_RDONLY)  # persist the rename
  os.fsync(handle)
  os.close(handle)
  _remove_leftovers(directory)


def write_json(file, value):
  """Writes a JSON-serialisable value to `file` with `atomic_write`.

  Raises:
    TypeError: value is not JSON-serialisable (nothing is written).
  """
  text = json.dumps(value, indent=1).encode()  # TypeError before any write
  atomic_write(file, lambda stream: stream.write(text))


def _json_digest(value):
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def seal(value):
  """The dict `value` with 'sha256': the digest of its canonical JSON, so
  that read_json(..., sealed=True) refuses an edited or bit-flipped copy
  that still parses."""
  return dict(value, sha256=_json_digest(value))


_RECOVER = {
  'metadata.json': 'run the same command again: the store is finalised anew '
  'from its shards',
}


def read_json(path, name, version, *, sealed=False):
  """A JSON file of a store / fit directory, refusing other versions.

  Args:
    path: the directory.
    name: the file name in it.
    version: the format_version the file must have.
    sealed: the file was written `seal`ed: check (and drop) its sha256.

  Returns:
    the parsed JSON value (a dict).

  Raises:
    FileNotFoundError: no such file (not a regagg_jax directory).
    ValueError: another format version, or a corrupt or damaged file
      (naming it and what recovers it).
  """
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    raise FileNotFoundError(
      f'{path} is not a regagg_jax directory: {name} is missing'
    )
  recover = _RECOVER.get(name, f'delete {path} and run the same command again')
  try:
    with open(file) as stream:
      value = json.load(stream)
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(
      f'{file} is corrupt ({type(error).__name__}: {error}); {recover}'
    ) from error
  found = value.get('format_version') if isinstance(value, dict) else None
  if found != version:
    raise ValueError(
      f'{file} has format version {found}, this code reads '
      f'version {version}; re-create it'
    )
  if sealed:
    value = dict(value)
    if value.pop('sha256', None) != _json_digest(value):
      raise ValueError(
        f'{file} does not match the sha256 it was written with (a damaged '
        f'or edited file); {recover}'
      )
  return value


def replace_directory(write, path):
  """Calls write(tmp_dir) then renames tmp_dir to path (replacing it).

  If write raises, the temporary directory is removed and a previous
  directory at path is kept.

  Args:
    write: callable filling the (new, empty) directory it is given.
    path: directory to create or replace.
  """
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(
    prefix=os.path.basename(path) + _temporary_tag('.tmp-'), dir=parent
  )
  try:
    write(tmp)
    _kill_if_asked(path)
    if os.path.exists(path):
      old = tempfile.mkdtemp(
        prefix=os.path.basename(path) + _temporary_tag('.old-'), dir=parent
      )
      os.replace(path, os.path.join(old, 'store'))
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _remove_leftovers(parent)


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
        seal(
          dict(
            fit.metadata,
            format_version=FIT_FORMAT_VERSION,
            params_hash=_fit_hash(fit.reduction, fit.whitening),
          )
        ),
        stream,
        indent=1,
      )

  replace_directory(write, path)


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
  metadata = read_json(path, 'fit.json', FIT_FORMAT_VERSION, sealed=True)
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
  atomic_write(
    path + '.csv', lambda stream: stream.write(table.getvalue().encode())
  )
  write_json(path + '.json', {**(header or {}), 'queries': entries})
