"""Tests for regagg_jax.evaluation.sources (official sources, downloads)."""

import tarfile

import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import sources


def test_official_sources():
  pages = {name: source.page for name, source in sources.SOURCES.items()}
  assert pages == {
    'oxford5k': 'https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/',
    'paris6k': 'https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/',
    'roxford5k': 'http://cmp.felk.cvut.cz/revisitop/',
    'rparis6k': 'http://cmp.felk.cvut.cz/revisitop/',
    'holidays': 'https://lear.inrialpes.fr/people/jegou/data.php',
    'ukbench': 'https://archive.org/details/ukbench',
  }
  assert sources.SOURCES['oxford5k'].archives == (
    'https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz',
  )
  assert sources.SOURCES['rparis6k'].archives[-1] == (
    'http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl'
  )
  for name, source in sources.SOURCES.items():
    text = sources.download_instructions(name)
    assert source.page in text and all(url in text for url in source.archives)
  with pytest.raises(ValueError, match='unknown benchmark'):
    sources.download_instructions('flickr1m')


def test_download_refuses_unknown_names_before_touching_disk(tmp_path):
  with pytest.raises(ValueError, match='unknown benchmark'):
    sources.download('flickr1m', tmp_path)
  assert not (tmp_path / 'flickr1m').exists()


def test_download_fetches_extracts_once_and_is_found(
  tmp_path, monkeypatch, touch
):
  source_dir = tmp_path / 'server'
  touch(source_dir, ['jpg/100000.jpg', 'jpg/100001.jpg'])
  archive = tmp_path / 'jpg1.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(source_dir / 'jpg', arcname='jpg')
  monkeypatch.setitem(
    sources.SOURCES,
    'holidays',
    sources.Source('https://example.invalid/', (archive.as_uri(),)),
  )
  target = sources.download('holidays', tmp_path / 'data')
  assert target == tmp_path / 'data' / 'holidays'
  assert (target / 'jpg1.tar.gz').is_file() and (
    target / 'jpg1.tar.gz.extracted'
  ).is_file()
  archive.unlink()  # a second call neither fetches nor extracts again
  assert sources.download('holidays', tmp_path / 'data') == target
  dataset = datasets.Dataset(
    'holidays',
    'holidays',
    ('100000.jpg', '100001.jpg'),
    ('100000.jpg',),
    np.array([0]),
    None,
    (np.array([1]),),
    (np.array([0]),),
  )
  assert datasets.database_paths(dataset, target) == [
    target / 'jpg/jpg/100000.jpg',
    target / 'jpg/jpg/100001.jpg',
  ]


def test_r1m_distractors_point_at_the_official_archives():
  source = sources.DISTRACTORS['revisitop1m']
  assert len(source.archives) == 100
  assert source.archives[0] == (
    'http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.1.tar.gz'
  )
  assert 'revisitop1m.100.tar.gz' in sources.download_instructions(
    'revisitop1m'
  )
