"""Benchmarks: image lists, ground truth, query boxes (host).

A `Dataset` holds everything a benchmark run needs except the pixels: the
database image names, the query names with their boxes, and per query the
database indices of the positive and junk images. The images are not bundled
(only the ground truth is); users download them from the official sources
(`sources.download_instructions(name)`, `sources.download(name, root)`)
and pass the folder. The `Dataset` record is defined in `groundtruth`.

  name        database / queries                    protocol (metrics.evaluate)
  oxford5k    5063 / 55 cropped (in the database)   positives = good + ok, junk ignored
  paris6k     6392 / 55 cropped (in the database)   same; the 20 corrupt images are not listed
  roxford5k   4993 / 70 cropped (not in database)   Easy / Medium / Hard mAP and mP@k
  rparis6k    6322 / 70 cropped (not in database)   same
  holidays    1491 / 500 full images                query dropped from its ranking; longer
                                                    side resized to HOLIDAYS_MAX_SIZE
  ukbench     every image queries (group = id // 4) N-S score (top 4) and mAP
  folder      any folder + FOLDER_GROUND_TRUTH file mAP and mP@k (see `folders.load_folder`)

For the pipeline: load images with `database_paths` / `query_paths`, resize to
`dataset.max_size` when it is set (never for Oxford/Paris, whose images keep
their original size), read them with `apply_exif=dataset.apply_exif` (False
for Oxford/Paris: boxes refer to the stored pixels), cut queries with `images.crop_query(image, dataset.boxes[q])`
at full resolution before any resizing (skip the crop for the paper's "OF"
full-query rows), rotate with `images.rotate_image(image, dataset.rotations[name])`
when a Holidays rotation file was given, and score `ranks` (Q, N) with
`metrics.evaluate(dataset, ranks)`.
"""

import os
import re
from pathlib import Path

import numpy as np
import scipy.io
from absl import logging

from regagg_jax.evaluation import folders
from regagg_jax.evaluation import groundtruth
from regagg_jax.evaluation import sources
from regagg_jax.evaluation.groundtruth import Dataset

HOLIDAYS_MAX_SIZE = (
  1024  # paper Sec. 5: Holidays images resized so the longer side is 1024.
)
UKBENCH_GROUP_SIZE = (
  4  # UKBench: groups of 4 consecutive ids (group = id // 4).
)
SAMPLES_ROOT = Path(__file__).resolve().parents[2] / 'data' / 'samples'
# Ground truth shipped beside the clone (../shared/data/gnd); override with ground_truth_root.
DEFAULT_GROUND_TRUTH_ROOT = (
  Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'gnd'
)


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
      raise sources.DatasetNotFoundError(
        'ukbench needs image_root.\n' + sources.download_instructions(name)
      )
    return load_ukbench(image_root)
  if name == 'samples':
    return load_ukbench(SAMPLES_ROOT)._replace(name='samples')
  if not Path(name).is_dir():
    raise ValueError(
      f'{name!r} is neither a benchmark ({", ".join(sources.SOURCES)}, samples) '
      'nor a folder'
    )
  return folders.load_folder(name)


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
  if name not in sources.SOURCES or name == 'ukbench':
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
    raise sources.DatasetNotFoundError(
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
    else groundtruth.NO_ROTATIONS
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
  root = sources.check_folder(Path(image_root), 'ukbench')
  found = sorted(
    (int(m.group(1)), str(f.relative_to(root)))
    for f in root.rglob('*')
    if (m := re.fullmatch(r'ukbench(\d+)\.jpe?g', f.name, re.IGNORECASE))
  )
  if not found:
    raise sources.DatasetNotFoundError(
      f'ukbench: no ukbenchNNNNN.jpg files in {root}.\n'
      + sources.download_instructions('ukbench')
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


def _locate(names, dataset: Dataset, image_root) -> list[Path]:
  """Finds each name under image_root, directly or anywhere below (e.g. paris/louvre/).

  User folders (protocol 'custom') match names exactly, never by file name.

  Known-corrupt Paris files found in the folder are reported and never used.
  """
  root = image_root if image_root is not None else dataset.image_root
  if root is None:
    raise sources.DatasetNotFoundError(
      f'{dataset.name}: pass image_root, the folder of its images.'
      + sources.hint(dataset.name)
    )
  root = sources.check_folder(Path(root), dataset.name)
  found = {}
  for folder, _, files in os.walk(root):
    for file in files:
      found.setdefault(file, Path(folder) / file)
  skipped = sorted(f for f in found if sources.is_corrupt(f))
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
    raise sources.DatasetNotFoundError(
      f'{dataset.name}: {len(missing)} of {len(names)} images are not '
      f'under {root}, e.g. {", ".join(missing[:5])}'
    )
  return paths
