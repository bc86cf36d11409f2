"""workspace: datasets by name, the database's images, query crops, and
fits kept while their metadata matches."""

import json
import os

import numpy as np
import pytest

from configs import quick
from regagg_jax.evaluation import datasets
from regagg_jax.experiment import workspace


def _dataset(root='/images', protocol='custom', boxes=None):
  """Images a.jpg and b.jpg under root (empty files when root is a Path)."""
  if not isinstance(root, str):
    for name in ('a.jpg', 'b.jpg'):
      (root / name).write_bytes(b'')
  return datasets.Dataset(
    name='d',
    protocol=protocol,
    images=('a.jpg', 'b.jpg'),
    queries=('a.jpg',),
    query_indices=np.zeros(1, np.int64),
    boxes=boxes,
    positives=(),
    junk=(),
    image_root=str(root),
  )


def test_folder_without_ground_truth_is_its_images(tmp_path):
  for name in ('b.jpg', 'a.png', 'notes.txt'):
    (tmp_path / name).write_bytes(b'')
  dataset = workspace.open_dataset(
    quick.get_config(), 'folder', str(tmp_path), ground_truth=False
  )
  assert dataset.images == ('a.png', 'b.jpg')
  assert dataset.queries == () and dataset.query_indices.shape == (0,)
  assert dataset.image_root == str(tmp_path)


def test_database_images_put_distractors_after_the_dataset(tmp_path):
  config = quick.get_config()
  dataset = _dataset(tmp_path)
  role, paths, names = workspace.database_images(config, dataset)
  assert role == 'database' and names == ['a.jpg', 'b.jpg']
  assert paths == datasets.database_paths(dataset)
  (tmp_path / 'r1m').mkdir()
  (tmp_path / 'r1m' / 'x.jpg').write_bytes(b'')
  config.eval.distractors = str(tmp_path / 'r1m')
  role, paths, names = workspace.database_images(config, dataset)
  assert role == 'database+r1m' and names == ['a.jpg', 'b.jpg', 'x.jpg']
  assert paths[-1] == os.path.join(str(tmp_path / 'r1m'), 'x.jpg')
  with pytest.raises(ValueError, match='cannot be used with UKBench'):
    workspace.database_images(config, _dataset(tmp_path, protocol='ukbench'))


def test_query_boxes_only_when_cropping_a_dataset_with_boxes():
  config = quick.get_config()
  boxes = np.array([[0.0, 0.0, 4.0, 4.0]])
  config.eval.crop_queries = True
  assert workspace.query_boxes(config, _dataset()) is None
  assert workspace.query_boxes(config, _dataset(boxes=boxes)) is boxes
  config.eval.crop_queries = False
  assert workspace.query_boxes(config, _dataset(boxes=boxes)) is None


def test_store_whitened_needs_another_image_set(tmp_path):
  config = quick.get_config()
  config.pca.store_whitened = True
  config.pca.fit_on = ''
  with pytest.raises(ValueError, match='store_whitened needs pca.fit_on'):
    workspace.prepare(config, _dataset(tmp_path))


class _Kept:
  def __init__(self, metadata):
    self.metadata = metadata


def _load(path):
  with open(os.path.join(path, 'kept.json')) as stream:
    return _Kept(json.load(stream))


def _save(path, value):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'kept.json'), 'w') as stream:
    json.dump(value.metadata, stream)


def test_cached_is_reused_while_its_metadata_matches(tmp_path):
  path = str(tmp_path / 'fit')
  made = []

  def make(value):
    made.append(value)
    return _Kept({'hash': value})

  def cached(value):
    return workspace.cached(
      path, lambda: make(value), {'hash': value}, load=_load, save=_save
    )

  assert cached('a').metadata == {'hash': 'a'}
  assert cached('a').metadata == {'hash': 'a'}
  assert made == ['a']
  assert cached('b').metadata == {'hash': 'b'}  # stale: made again
  assert made == ['a', 'b']
