"""Benchmarks: image lists, ground truth, query boxes (host).

A `Dataset` holds everything a benchmark run needs except the pixels: the
database image names, the query names with their boxes, and per query the
database indices of the positive and junk images. The images are not bundled
(only the ground truth is); users download them from the official sources
(`download_instructions(name)`, `download(name, root)`) and pass the folder.

  name        database / queries                    protocol (metrics.evaluate)
  oxford5k    5063 / 55 cropped (in the database)   positives = good + ok, junk ignored
  paris6k     6392 / 55 cropped (in the database)   same; the 20 corrupt images are not listed
  roxford5k   4993 / 70 cropped (not in database)   Easy / Medium / Hard mAP and mP@k
  rparis6k    6322 / 70 cropped (not in database)   same
  holidays    1491 / 500 full images                query dropped from its ranking; longer
                                                    side resized to HOLIDAYS_MAX_SIZE
  ukbench     every image queries (group = id // 4) N-S score (top 4) and mAP
  folder      any folder + FOLDER_GROUND_TRUTH file mAP and mP@k (see `load_folder`)

For the pipeline: load images with `database_paths` / `query_paths`, resize to
`dataset.max_size` when it is set (never for Oxford/Paris, whose images keep
their original size), read them with `apply_exif=dataset.apply_exif` (False
for Oxford/Paris: boxes refer to the stored pixels), cut queries with `images.crop_query(image, dataset.boxes[q])`
at full resolution before any resizing (skip the crop for the paper's "OF"
full-query rows), rotate with `images.rotate_image(image, dataset.rotations[name])`
when a Holidays rotation file was given, and score `ranks` (Q, N) with
`metrics.evaluate(dataset, ranks)`.
"""

import json
import os
import re
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np
import scipy.io
from absl import logging

from regagg_jax.evaluation import groundtruth

HOLIDAYS_MAX_SIZE = (
  1024  # paper Sec. 5: Holidays images resized so the longer side is 1024.
)
UKBENCH_GROUP_SIZE = (
  4  # UKBench: groups of 4 consecutive ids (group = id // 4).
)
FOLDER_GROUND_TRUTH = 'groundtruth.json'
IMAGE_EXTENSIONS = (
  '.jpg',
  '.jpeg',
  '.png',
  '.bmp',
  '.ppm',
  '.pgm',
  '.tif',
  '.tiff',
  '.webp',
)
SAMPLES_ROOT = Path(__file__).resolve().parents[2] / 'data' / 'samples'
# Ground truth shipped beside the clone (../shared/data/gnd); override with ground_truth_root.
DEFAULT_GROUND_TRUTH_ROOT = (
  Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'gnd'
)

# https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/corrupt.txt: not images, never listed.
PARIS6K_CORRUPT = (
  'paris_louvre_000136',
  'paris_louvre_000146',
  'paris_moulinrouge_000422',
  'paris_museedorsay_001059',
  'paris_notredame_000188',
  'paris_pantheon_000284',
  'paris_pantheon_000960',
  'paris_pantheon_000974',
  'paris_pompidou_000195',
  'paris_pompidou_000196',
  'paris_pompidou_000201',
  'paris_pompidou_000467',
  'paris_pompidou_000640',
  'paris_sacrecoeur_000299',
  'paris_sacrecoeur_000330',
  'paris_sacrecoeur_000353',
  'paris_triomphe_000662',
  'paris_triomphe_000833',
  'paris_triomphe_000863',
  'paris_triomphe_000867',
)


_NO_ROTATIONS = MappingProxyType({})


class Source(NamedTuple):
  """Official home page and download links of a benchmark."""

  page: str
  archives: tuple[str, ...]
  note: str = ''


_OXFORD = 'https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/'
_PARIS = 'https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/'
_REVISITOP = 'http://cmp.felk.cvut.cz/revisitop/'
SOURCES = {
  'oxford5k': Source(_OXFORD, (_OXFORD + 'oxbuild_images-v1.tgz',)),
  'paris6k': Source(
    _PARIS,
    (_PARIS + 'paris_1-v1.tgz', _PARIS + 'paris_2-v1.tgz'),
    'the 20 corrupt files of the archives are skipped (PARIS6K_CORRUPT)',
  ),
  'roxford5k': Source(
    _REVISITOP,
    (
      _OXFORD + 'oxbuild_images-v1.tgz',
      _REVISITOP + 'data/datasets/roxford5k/gnd_roxford5k.pkl',
    ),
  ),
  'rparis6k': Source(
    _REVISITOP,
    (
      _PARIS + 'paris_1-v1.tgz',
      _PARIS + 'paris_2-v1.tgz',
      _REVISITOP + 'data/datasets/rparis6k/gnd_rparis6k.pkl',
    ),
  ),
  'holidays': Source(
    'https://lear.inrialpes.fr/people/jegou/data.php',
    (
      'ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg1.tar.gz',
      'ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg2.tar.gz',
    ),
    'the manually rotated set is not official: give a rotation file '
    '(load_rotations) or point image_root at your rotated copy',
  ),
  'ukbench': Source(
    'https://archive.org/details/ukbench',
    ('https://archive.org/download/ukbench/ukbench.zip',),
    'mirror of the original http://vis.uky.edu/~stewe/ukbench/',
  ),
}

_R1M = 'http://ptak.felk.cvut.cz/revisitop/revisitop1m/'
DISTRACTORS = {
  'revisitop1m': Source(
    _R1M,
    tuple(f'{_R1M}jpg/revisitop1m.{i}.tar.gz' for i in range(1, 101)),
    'R1M, the 1M distractors of ROxford / RParis: pass '
    'the folder as eval.distractors',
  ),
}
"""Distractor sets added to a benchmark's database (never relevant)."""


class DatasetNotFoundError(FileNotFoundError):
  """Images or ground truth are missing; the message says where and how to get them."""


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
  rotations: Mapping[str, int] = _NO_ROTATIONS
  apply_exif: bool = True


def download_instructions(name: str) -> str:
  """Where and how to get a benchmark's images (official sources)."""
  source = _source(name)
  lines = [f'{name}: download the images from {source.page}'] + [
    f'  {u}' for u in source.archives
  ]
  lines.append(
    f'and extract them under one folder (any layout), or run '
    f'regagg_jax.evaluation.datasets.download({name!r}, root).'
  )
  if source.note:
    lines.append(f'Note: {source.note}.')
  return '\n'.join(lines)


def download(name: str, root) -> Path:
  """Fetches and extracts a benchmark's official archives into root/name.

  Needs internet access. Archives already there are neither fetched nor
  extracted again. A revisited pkl lands in root/name, so `root` then also
  serves as `ground_truth_root`.

  Returns:
    root/name, the folder to pass as `image_root`.
  """
  archives = _source(name).archives
  target = Path(root) / name
  target.mkdir(parents=True, exist_ok=True)
  for url in archives:
    archive = target / url.rsplit('/', 1)[-1]
    if not archive.exists():
      logging.info('Downloading %s to %s', url, archive)
      partial = archive.with_name(archive.name + '.part')
      urllib.request.urlretrieve(url, partial)
      partial.rename(archive)
    done = archive.with_name(archive.name + '.extracted')
    if done.exists():
      continue
    if tarfile.is_tarfile(archive):
      safe = (
        {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
      )  # no unsafe members
      with tarfile.open(archive) as tar:
        tar.extractall(target / 'jpg', **safe)
    elif zipfile.is_zipfile(archive):
      with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target / 'jpg')
    done.touch()
  return target


def load(
  name: str, *, ground_truth_root=None, image_root=None, rotation_file=None
) -> Dataset:
  """Loads a benchmark by name, 'samples' (the bundled UKBench images) or a folder path.

  Args:
    name: 'oxford5k', 'paris6k', 'roxford5k', 'rparis6k', 'holidays', 'ukbench',
      'samples', or the path of a folder with a FOLDER_GROUND_TRUTH file.
    ground_truth_root: see `load_benchmark`.
    image_root: folder of the benchmark's images (required for 'ukbench').
    rotation_file: Holidays only, see `load_rotations`.
  """
  if name in ('oxford5k', 'paris6k', 'roxford5k', 'rparis6k', 'holidays'):
    dataset = load_benchmark(
      name, ground_truth_root=ground_truth_root, rotation_file=rotation_file
    )
    return dataset._replace(
      image_root=None if image_root is None else Path(image_root)
    )
  if name == 'ukbench':
    if image_root is None:
      raise DatasetNotFoundError(
        'ukbench needs image_root.\n' + download_instructions(name)
      )
    return load_ukbench(image_root)
  if name == 'samples':
    return load_ukbench(SAMPLES_ROOT)._replace(name='samples')
  if not Path(name).is_dir():
    raise ValueError(
      f'{name!r} is neither a benchmark ({", ".join(SOURCES)}, samples) '
      'nor a folder'
    )
  return load_folder(name)


def load_benchmark(
  name: str, *, ground_truth_root=None, rotation_file=None
) -> Dataset:
  """Reads the ground truth of Oxford5k, Paris6k, ROxford5k, RParis6k or Holidays.

  Args:
    name: 'oxford5k', 'paris6k', 'roxford5k', 'rparis6k' or 'holidays'.
    ground_truth_root: folder with name/gnd_name.mat|pkl (or gnd_name.* directly);
      default DEFAULT_GROUND_TRUTH_ROOT.
    rotation_file: Holidays only, a `load_rotations` file.
  """
  if name not in SOURCES or name == 'ukbench':
    raise ValueError(f'unknown benchmark {name!r}')
  if rotation_file is not None and name != 'holidays':
    raise ValueError('rotation_file is for holidays only')
  root = Path(
    DEFAULT_GROUND_TRUTH_ROOT
    if ground_truth_root is None
    else ground_truth_root
  )
  extension = '.pkl' if name in ('roxford5k', 'rparis6k') else '.mat'
  candidates = [
    root / name / f'gnd_{name}{extension}',
    root / f'gnd_{name}{extension}',
  ]
  path = next((p for p in candidates if p.is_file()), None)
  if path is None:
    raise DatasetNotFoundError(
      f'{name}: no ground truth file, looked for {candidates[0]}'
      f' and {candidates[1]}'
    )
  if extension == '.pkl':
    data = groundtruth.load_pickle(path)  # no code runs
    images = tuple(f'{n}.jpg' for n in data['imlist'])
    labels = {
      k: tuple(np.asarray(g[k], np.int64) for g in data['gnd'])
      for k in ('easy', 'hard', 'junk')
    }
    return Dataset(
      name,
      'revisited',
      images,
      tuple(f'{n}.jpg' for n in data['qimlist']),
      np.full(len(data['qimlist']), -1, np.int64),
      np.array([g['bbx'] for g in data['gnd']], np.float64),
      tuple(
        np.concatenate([e, h]) for e, h in zip(labels['easy'], labels['hard'])
      ),
      labels['junk'],
      labels['easy'],
      labels['hard'],
      apply_exif=False,
    )
  mat = scipy.io.loadmat(path)
  images = tuple(f'{str(n[0][0])}.jpg' for n in mat['imlist'])
  query_indices = mat['qidx'].ravel().astype(np.int64) - 1  # MATLAB is 1-based.
  gnd = mat['gnd'].ravel()
  field = lambda key: tuple(g[key].ravel().astype(np.int64) - 1 for g in gnd)
  boxes = (
    np.array([g['bbx'].ravel() for g in gnd], np.float64)
    if 'bbx' in gnd.dtype.names
    else None
  )
  holidays = name == 'holidays'
  rotations = (
    load_rotations(rotation_file)
    if rotation_file is not None
    else _NO_ROTATIONS
  )
  return Dataset(
    name,
    'holidays' if holidays else 'oxford',
    images,
    tuple(images[i] for i in query_indices),
    query_indices,
    boxes,
    field('ok'),
    field('junk'),
    max_size=HOLIDAYS_MAX_SIZE if holidays else None,
    rotations=rotations,
    apply_exif=holidays,
  )


def load_ukbench(image_root) -> Dataset:
  """UKBench from the file names ukbenchNNNNN.jpg under a folder; group = id // 4.

  Every image is a query and its positives are the images of its group, itself
  included (N-S counts it). Works on the full set and on the bundled samples.
  """
  root = check_folder(Path(image_root), 'ukbench')
  found = sorted(
    (int(m.group(1)), str(f.relative_to(root)))
    for f in root.rglob('*')
    if (m := re.fullmatch(r'ukbench(\d+)\.jpe?g', f.name, re.IGNORECASE))
  )
  if not found:
    raise DatasetNotFoundError(
      f'ukbench: no ukbenchNNNNN.jpg files in {root}.\n'
      + download_instructions('ukbench')
    )
  groups = np.array([i for i, _ in found], np.int64) // UKBENCH_GROUP_SIZE
  sizes = np.unique(groups, return_counts=True)[1]
  if np.any(sizes != UKBENCH_GROUP_SIZE):
    logging.warning(
      'ukbench: %d groups in %s do not have %d images',
      np.sum(sizes != UKBENCH_GROUP_SIZE),
      root,
      UKBENCH_GROUP_SIZE,
    )
  images = tuple(name for _, name in found)
  rows = np.arange(len(images), dtype=np.int64)
  return Dataset(
    'ukbench',
    'ukbench',
    images,
    images,
    rows,
    None,
    tuple(np.flatnonzero(groups == g) for g in groups),
    tuple(np.zeros(0, np.int64) for _ in images),
    groups=groups,
    image_root=root,
  )


def load_folder(root, *, ground_truth: str = FOLDER_GROUND_TRUTH) -> Dataset:
  """A user's collection: a folder of images and a small JSON ground truth.

  root/groundtruth.json holds either explicit queries,

    {"images": ["a.jpg", "sub/b.jpg", ...],        # optional, default: all images, sorted
     "queries": [{"image": "a.jpg", "positives": ["sub/b.jpg"],
                  "junk": [], "box": [x1, y1, x2, y2]}]}   # junk and box optional

  or groups, where every image queries, its group's other images are positive
  and the query itself is dropped from its ranking (the Holidays protocol):

    {"groups": {"a.jpg": "tower", "sub/b.jpg": "tower", "c.jpg": "bridge"}}

  Names are paths relative to root, matched exactly (never by file name
  alone), and may not leave it; repeated names, bad boxes and boxes on only
  some queries are errors (groundtruth.read_folder validates the file).
  Query images may lie outside "images".
  """
  root = check_folder(Path(root), Path(root).name)
  path = root / ground_truth
  if not path.is_file():
    raise DatasetNotFoundError(
      f'{root.name}: no ground truth file {path} '
      '(format: see datasets.load_folder)'
    )
  spec = groundtruth.read_folder(path)
  if 'groups' in spec:
    images = tuple(sorted(spec['groups']))
    labels = [spec['groups'][n] for n in images]
    index = {label: g for g, label in enumerate(dict.fromkeys(labels))}
    groups = np.array([index[label] for label in labels], np.int64)
    rows = np.arange(len(images), dtype=np.int64)
    return Dataset(
      root.name,
      'custom',
      images,
      images,
      rows,
      None,
      tuple(np.flatnonzero((groups == groups[i]) & (rows != i)) for i in rows),
      tuple(np.array([i]) for i in rows),
      groups=groups,
      image_root=root,
    )
  images = tuple(spec['images'] or list_images(root))
  where = {n: i for i, n in enumerate(images)}
  queries = spec['queries']
  unknown = sorted(
    {n for q in queries for n in q['positives'] + q['junk']} - set(where)
  )
  if unknown:
    raise groundtruth.GroundTruthError(
      f'{path}: positives/junk not among the images: {unknown[:5]}'
    )
  lookup = lambda names: np.array([where[n] for n in names], np.int64)
  boxes = (
    np.array([q['box'] for q in queries], np.float64)
    if queries and queries[0]['box'] is not None
    else None
  )
  return Dataset(
    root.name,
    'custom',
    images,
    tuple(q['image'] for q in queries),
    np.array([where.get(q['image'], -1) for q in queries], np.int64),
    boxes,
    tuple(lookup(q['positives']) for q in queries),
    tuple(lookup(q['junk']) for q in queries),
    image_root=root,
  )


def save_folder_ground_truth(dataset: Dataset, path) -> None:
  """Writes a dataset's ground truth in the explicit `load_folder` format."""
  queries = []
  for q, name in enumerate(dataset.queries):
    entry = {
      'image': name,
      'positives': [dataset.images[i] for i in dataset.positives[q]],
      'junk': [dataset.images[i] for i in dataset.junk[q]],
    }
    if dataset.boxes is not None:
      entry['box'] = [float(v) for v in dataset.boxes[q]]
    queries.append(entry)
  Path(path).write_text(
    json.dumps({'images': list(dataset.images), 'queries': queries}, indent=1)
  )


def list_images(folder) -> list[str]:
  """Image files under a folder (recursive) as sorted relative paths, minus corrupt Paris files.

  Dangling symbolic links are listed, so that reading reports them.
  """
  folder = Path(folder)
  names = sorted(
    str(p.relative_to(folder))
    for p in folder.rglob('*')
    if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or p.is_symlink())
  )
  return [n for n in names if not _is_corrupt(n)]


def database_paths(dataset: Dataset, image_root=None) -> list[Path]:
  """Paths of the N database images; raises DatasetNotFoundError naming what is missing."""
  return _locate(dataset.images, dataset, image_root)


def query_paths(dataset: Dataset, image_root=None) -> list[Path]:
  """Paths of the Q query images (full images: crop them with `images.crop_query`)."""
  return _locate(dataset.queries, dataset, image_root)


def load_rotations(path) -> dict[str, int]:
  """Reads a Holidays rotation file: 'file_name degrees' lines, clockwise multiples of 90."""
  rotations = {}
  for number, line in enumerate(Path(path).read_text().splitlines(), 1):
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    name, degrees = line.split()
    if int(degrees) % 90:
      raise ValueError(
        f'{path}:{number}: rotation must be a multiple of 90, got {degrees}'
      )
    rotations[name] = int(degrees) % 360
  return rotations


def _source(name: str) -> Source:
  sources = {**SOURCES, **DISTRACTORS}
  if name not in sources:
    raise ValueError(f'unknown benchmark {name!r}; known: {sorted(sources)}')
  return sources[name]


def _hint(name: str) -> str:
  return ('\n' + download_instructions(name)) if name in SOURCES else ''


def check_folder(folder, name: str) -> Path:
  """folder as a Path; DatasetNotFoundError naming it (and its sources) if absent."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DatasetNotFoundError(
      f'{name}: image folder {folder} does not exist.{_hint(name)}'
    )
  return folder


def _is_corrupt(name: str) -> bool:
  return Path(name).stem in PARIS6K_CORRUPT


def _locate(names, dataset: Dataset, image_root) -> list[Path]:
  """Finds each name under image_root, directly or anywhere below (e.g. paris/louvre/).

  User folders (protocol 'custom') match names exactly, never by file name.

  Known-corrupt Paris files found in the folder are reported and never used.
  """
  root = image_root if image_root is not None else dataset.image_root
  if root is None:
    raise DatasetNotFoundError(
      f'{dataset.name}: pass image_root, the folder of its images.'
      + _hint(dataset.name)
    )
  root = check_folder(Path(root), dataset.name)
  found = {}
  for folder, _, files in os.walk(root):
    for file in files:
      found.setdefault(file, Path(folder) / file)
  skipped = sorted(f for f in found if _is_corrupt(f))
  if skipped:
    logging.warning(
      '%s: skipping %d known-corrupt Paris images: %s',
      dataset.name,
      len(skipped),
      ', '.join(skipped),
    )
  exists = lambda path: path.is_file() or path.is_symlink()
  paths = [
    root / n
    if exists(root / n)
    else (None if dataset.protocol == 'custom' else found.get(Path(n).name))
    for n in names
  ]
  missing = [n for n, p in zip(names, paths) if p is None]
  if missing:
    raise DatasetNotFoundError(
      f'{dataset.name}: {len(missing)} of {len(names)} images are not '
      f'under {root}, e.g. {", ".join(missing[:5])}'
    )
  return paths
