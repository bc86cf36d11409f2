"""Ground truth: the Dataset record, and untrusted files read safely (host).

  Dataset      the ground truth of one benchmark (names, boxes, labels)
  load_pickle  a Revisited gnd_*.pkl through an allow-listed unpickler
  read_folder  a folder's groundtruth.json, validated field by field
  check_box    one query box: 4 finite numbers, x1 < x2, y1 < y2

Ground truth comes from mirrors, colleagues and hand-written files, so it
is data, never code: `load_pickle` refuses every global a pickle names
except numpy's array and scalar reconstructors (the official files name
none at all), and `read_folder` checks every name and box before any
image is opened. Every error names the file, the query and the field.
"""

import json
import math
import pickle
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np

PICKLE_GLOBALS = frozenset(
  (module, name)
  for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
  for name in ('_reconstruct', 'scalar')
) | {('numpy', 'ndarray'), ('numpy', 'dtype')}
"""(module, name) a ground-truth pickle may name: numpy arrays and scalars."""


NO_ROTATIONS = MappingProxyType({})
"""Dataset.rotations of a benchmark without rotated images."""


class Dataset(NamedTuple):
  """Ground truth of one benchmark (host arrays; indices are into `images`).

  Attributes:
    name: benchmark name ('oxford5k', ..., 'ukbench', or the folder name).
    protocol: 'oxford' | 'revisited' | 'holidays' | 'ukbench' | 'custom'.
    images: N database file names (relative to the image folder).
    queries: Q query file names.
    query_indices: int64 (Q,) database index of each query, -1 if not in it.
    boxes: float64 (Q, 4) query boxes x1 y1 x2 y2 in pixels, or None.
    positives: Q int64 arrays of relevant database indices (revisited: easy + hard).
    junk: Q int64 arrays of ignored database indices.
    easy: Q int64 arrays (revisited only, else None).
    hard: Q int64 arrays (revisited only, else None).
    groups: int64 (N,) group of each database image (ukbench / grouped folders), or None.
    max_size: longer side to resize every image to, or None for the original size.
    image_root: folder of the images when known (ukbench, folders), else None.
    rotations: {file name: degrees clockwise} for manually rotated Holidays.
    apply_exif: whether images are read with their JPEG EXIF orientation
      applied (images.load_image). False for Oxford / Paris (also revisited):
      their query boxes and official protocols (PIL, no EXIF transposition)
      refer to the stored pixel orientation.
  """

  name: str
  protocol: str
  images: tuple[str, ...]
  queries: tuple[str, ...]
  query_indices: np.ndarray
  boxes: np.ndarray | None
  positives: tuple[np.ndarray, ...]
  junk: tuple[np.ndarray, ...]
  easy: tuple[np.ndarray, ...] | None = None
  hard: tuple[np.ndarray, ...] | None = None
  groups: np.ndarray | None = None
  max_size: int | None = None
  image_root: Path | None = None
  rotations: Mapping[str, int] = NO_ROTATIONS
  apply_exif: bool = True


class GroundTruthError(ValueError):
  """A ground-truth file that cannot be trusted; the message names the file,
  the query and the field."""


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only PICKLE_GLOBALS (no code runs)."""

  def find_class(self, module, name):
    if (module, name) not in PICKLE_GLOBALS:
      raise pickle.UnpicklingError(
        f'global {module}.{name} is not allowed in ground truth'
      )
    return super().find_class(module, name)


def load_pickle(path):
  """Reads a ground-truth pickle without running code.

  Args:
    path: a gnd_*.pkl file (Revisited Oxford / Paris format).

  Returns:
    The unpickled object (a dict for the official files).

  Raises:
    GroundTruthError: the pickle names a global outside PICKLE_GLOBALS
      (e.g. os.system through __reduce__) or is malformed.
  """
  try:
    with open(path, 'rb') as stream:
      return _RestrictedUnpickler(stream).load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
    raise GroundTruthError(
      f'{path}: refused as ground truth ({error}); use the official file '
      'from http://cmp.felk.cvut.cz/revisitop/'
    ) from error


def check_box(box, where: str) -> list[float]:
  """A query box as 4 finite floats x1 y1 x2 y2 with x1 < x2, y1 < y2.

  Args:
    box: the value read from the file.
    where: '<file>: query <q> (<name>)', the start of every message.

  Returns:
    [x1, y1, x2, y2] as floats.

  Raises:
    GroundTruthError: naming `where` and the field "box".
  """
  numbers = isinstance(box, list) and len(box) == 4
  numbers = numbers and all(
    isinstance(v, (int, float)) and not isinstance(v, bool) for v in box
  )
  if not numbers:
    raise GroundTruthError(
      f'{where}: field "box" must be 4 numbers [x1, y1, x2, y2], got {box!r}'
    )
  if not all(math.isfinite(v) for v in box):
    raise GroundTruthError(f'{where}: field "box" is not finite: {box}')
  x1, y1, x2, y2 = (float(v) for v in box)
  if min(x1, y1) < 0 or x1 >= x2 or y1 >= y2:
    raise GroundTruthError(
      f'{where}: field "box" {box} needs 0 <= x1 < x2 and 0 <= y1 < y2'
    )
  return [x1, y1, x2, y2]


def _no_duplicate_keys(pairs):
  keys = [key for key, _ in pairs]
  repeated = sorted({key for key in keys if keys.count(key) > 1})
  if repeated:
    raise GroundTruthError(f'repeated keys {repeated}')
  return dict(pairs)


def _read_json(path: Path):
  try:
    spec = json.loads(path.read_text(), object_pairs_hook=_no_duplicate_keys)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise GroundTruthError(f'{path}: not valid JSON ({error})') from error
  except GroundTruthError as error:
    raise GroundTruthError(f'{path}: {error}') from error
  if not isinstance(spec, dict) or not ({'groups', 'queries'} & set(spec)):
    raise GroundTruthError(
      f'{path}: needs an object with "groups" or "queries" entries with '
      '"image" and "positives" (see folders.load_folder)'
    )
  return spec


def _check_name(name, where: str, field: str) -> str:
  """A relative path inside the folder, exactly as given."""
  if not isinstance(name, str) or not name:
    raise GroundTruthError(
      f'{where}: field "{field}" must hold file names, got {name!r}'
    )
  parts = PurePosixPath(name.replace('\\', '/')).parts
  if name.startswith(('/', '\\')) or ':' in parts[0] or '..' in parts:
    raise GroundTruthError(
      f'{where}: field "{field}" name {name!r} is not a relative path '
      'inside the folder'
    )
  return name


def _check_names(names, where: str, field: str) -> list[str]:
  """A list of distinct names (see `_check_name`)."""
  if not isinstance(names, list):
    raise GroundTruthError(
      f'{where}: field "{field}" must be a list of file names, got '
      f'{type(names).__name__} {names!r}'
    )
  names = [_check_name(n, where, field) for n in names]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise GroundTruthError(f'{where}: field "{field}" repeats {repeated[:5]}')
  return names


def read_folder(path) -> dict:
  """Reads and validates a folder's ground truth (folders.load_folder format).

  Args:
    path: the groundtruth.json file.

  Returns:
    {'groups': {name: label}} or {'images': names or None, 'queries':
    [{'image', 'positives', 'junk', 'box' (or None)}]}, every name a
    relative path inside the folder, every box checked (`check_box`).

  Raises:
    GroundTruthError: malformed JSON, a wrong type, an unsafe or repeated
      name, a bad box, boxes on only some queries, or a positive / junk
      name outside "images".
  """
  path = Path(path)
  spec = _read_json(path)
  if 'groups' in spec:
    groups = spec['groups']
    if not isinstance(groups, dict):
      raise GroundTruthError(
        f'{path}: field "groups" must map file names to group labels'
      )
    for name, label in groups.items():
      _check_name(name, str(path), 'groups')
      if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise GroundTruthError(
          f'{path}: field "groups" label of {name!r} must be a string or '
          f'an integer, got {label!r}'
        )
    return {'groups': groups}
  images = spec.get('images')
  if images is not None:
    images = _check_names(images, str(path), 'images')
  queries = spec['queries']
  if not isinstance(queries, list):
    raise GroundTruthError(f'{path}: field "queries" must be a list')
  checked = [
    _check_query(q, f'{path}: query {i}') for i, q in enumerate(queries)
  ]
  names = [q['image'] for q in checked]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise GroundTruthError(
      f'{path}: field "image" repeats queries {repeated[:5]}'
    )
  boxed = [q['image'] for q in checked if q['box'] is not None]
  if boxed and len(boxed) < len(checked):
    unboxed = [n for n in names if n not in boxed]
    raise GroundTruthError(
      f'{path}: field "box" is given for {len(boxed)} of {len(checked)} '
      f'queries: give it for all or none (missing on {unboxed[:5]})'
    )
  if images is not None:
    known = set(images)
    for i, query in enumerate(checked):
      for field in ('positives', 'junk'):
        unknown = [n for n in query[field] if n not in known]
        if unknown:
          raise GroundTruthError(
            f'{path}: query {i} ({query["image"]!r}): field "{field}" '
            f'names images not among "images": {unknown[:5]}'
          )
  return {'images': images, 'queries': checked}


def _check_query(query, where: str) -> dict:
  if not isinstance(query, dict) or 'image' not in query:
    raise GroundTruthError(
      f'{where}: must be an object with "image" and "positives"'
    )
  image = _check_name(query['image'], where, 'image')
  where = f'{where} ({image!r})'
  if 'positives' not in query:
    raise GroundTruthError(f'{where}: field "positives" is missing')
  unknown = sorted(set(query) - {'image', 'positives', 'junk', 'box'})
  if unknown:
    raise GroundTruthError(f'{where}: unknown fields {unknown}')
  box = query.get('box')
  return {
    'image': image,
    'positives': _check_names(query['positives'], where, 'positives'),
    'junk': _check_names(query.get('junk', []), where, 'junk'),
    'box': None if box is None else check_box(box, where),
  }
