"""Shared fixtures: repository paths, bundled sample images, real VGG19 weights."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root directory."""

SHARED_DIR = REPO_ROOT.parent / 'shared'
"""shared/ beside the clone (ground truth, UKBench mini set); may be absent."""

SAMPLES_DIR = REPO_ROOT / 'data' / 'samples'
"""56 bundled UKBench photos, 384 px longer side, groups of 4 (id // 4)."""


@pytest.fixture(scope='session')
def repo_root() -> Path:
  return REPO_ROOT


@pytest.fixture(scope='session')
def shared_dir() -> Path:
  if not SHARED_DIR.is_dir():
    pytest.skip(f'{SHARED_DIR} not present')
  return SHARED_DIR


@pytest.fixture(scope='session')
def sample_paths() -> list[Path]:
  paths = sorted(SAMPLES_DIR.glob('ukbench*.jpg'))
  assert paths, f'no sample images in {SAMPLES_DIR}'
  return paths


@pytest.fixture(scope='session')
def real_params() -> dict:
  """The real VGG19 variables (fetched and converted once, then cached)."""
  from regagg_jax.features import weights  # pylint: disable=g-import-not-at-top

  return weights.load_params()


@pytest.fixture
def encoded_rows(monkeypatch):
  """encoded_rows() -> list: the rows each later pipeline.encode_rows call
  encodes, recorded; fitting U^1 (eq. 4) again fails the test."""
  from regagg_jax.experiment import fitting  # pylint: disable=g-import-not-at-top
  from regagg_jax.experiment import pipeline  # pylint: disable=g-import-not-at-top

  def start():
    encoded = []
    original = pipeline.encode_rows

    def recording(config, paths, rows, **kwargs):
      encoded.append(list(rows))
      return original(config, paths, rows, **kwargs)

    monkeypatch.setattr(pipeline, 'encode_rows', recording)
    monkeypatch.setattr(fitting, 'fit_reduction', None)  # U^1 is kept
    return encoded

  return start
