"""Where the benchmarks come from: official sources and downloads (host).

  SOURCES                page and archives of each benchmark
  DISTRACTORS            distractor sets (R1M) added to a database
  download_instructions  where and how to get a benchmark's images
  download               fetches and extracts the official archives
  check_folder           an image folder, or an error saying how to get it

The images are never bundled; only the ground truth is (datasets).
"""

import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple

from absl import logging

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


def download_instructions(name: str) -> str:
  """Where and how to get a benchmark's images (official sources)."""
  source = find_source(name)
  lines = [f'{name}: download the images from {source.page}'] + [
    f'  {u}' for u in source.archives
  ]
  lines.append(
    f'and extract them under one folder (any layout), or run '
    f'regagg_jax.evaluation.sources.download({name!r}, root).'
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
  archives = find_source(name).archives
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


def find_source(name: str) -> Source:
  """The official Source of a benchmark or distractor set."""
  sources = {**SOURCES, **DISTRACTORS}
  if name not in sources:
    raise ValueError(f'unknown benchmark {name!r}; known: {sorted(sources)}')
  return sources[name]


def hint(name: str) -> str:
  """Download instructions to append to an error, for known benchmarks."""
  return ('\n' + download_instructions(name)) if name in SOURCES else ''


def check_folder(folder, name: str) -> Path:
  """folder as a Path; DatasetNotFoundError naming it (and its sources) if absent."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DatasetNotFoundError(
      f'{name}: image folder {folder} does not exist.{hint(name)}'
    )
  return folder


def is_corrupt(name: str) -> bool:
  """Whether a file name is one of the 20 corrupt Paris6k files."""
  return Path(name).stem in PARIS6K_CORRUPT
