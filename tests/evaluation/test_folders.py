"""Tests for regagg_jax.evaluation.folders (a user's folder and groundtruth.json)."""

import json

import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import folders
from regagg_jax.evaluation import metrics


def test_user_folder_round_trip(tmp_path, touch):
  names = ['a.jpg', 'b.png', 'sub/c.jpg', 'sub/d.JPG']
  touch(tmp_path, names + ['notes.txt'])
  spec = {
    'queries': [
      {
        'image': 'a.jpg',
        'positives': ['sub/c.jpg'],
        'junk': ['b.png'],
        'box': [1, 2, 3, 4],
      },
      {
        'image': 'elsewhere/q.jpg',
        'positives': ['b.png', 'sub/d.JPG'],
        'box': [0, 0, 5, 5],
      },
    ]
  }
  (tmp_path / folders.FOLDER_GROUND_TRUTH).write_text(json.dumps(spec))
  dataset = datasets.load(str(tmp_path))
  assert dataset.images == tuple(sorted(names)) and dataset.protocol == 'custom'
  assert dataset.queries == ('a.jpg', 'elsewhere/q.jpg')
  np.testing.assert_array_equal(dataset.query_indices, [0, -1])
  np.testing.assert_array_equal(dataset.positives[0], [2])
  np.testing.assert_array_equal(dataset.positives[1], [1, 3])
  np.testing.assert_array_equal(dataset.junk[0], [1])
  assert dataset.junk[1].size == 0
  np.testing.assert_array_equal(dataset.boxes, [[1, 2, 3, 4], [0, 0, 5, 5]])
  assert datasets.database_paths(dataset) == [
    tmp_path / n for n in dataset.images
  ]
  # Written back and read again: identical ground truth.
  copy = tmp_path / 'copy'
  copy.mkdir()
  folders.save_folder_ground_truth(dataset, copy / folders.FOLDER_GROUND_TRUTH)
  again = folders.load_folder(copy)
  assert again.images == dataset.images and again.queries == dataset.queries
  for field in ('positives', 'junk'):
    for a, b in zip(getattr(again, field), getattr(dataset, field)):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(again.boxes, dataset.boxes)
  np.testing.assert_array_equal(again.query_indices, dataset.query_indices)
  spec['queries'][0]['positives'] = ['missing.jpg']
  (tmp_path / folders.FOLDER_GROUND_TRUTH).write_text(json.dumps(spec))
  with pytest.raises(ValueError, match='missing.jpg'):
    folders.load_folder(tmp_path)
  (tmp_path / folders.FOLDER_GROUND_TRUTH).write_text(
    json.dumps({'queries': [{'image': 'a.jpg'}]})
  )
  with pytest.raises(ValueError, match='"positives"'):
    folders.load_folder(tmp_path)


def test_user_folder_groups(tmp_path, touch):
  groups = {
    'x1.jpg': 'tower',
    'x2.jpg': 'tower',
    'y.jpg': 'bridge',
    'x3.jpg': 'tower',
  }
  touch(tmp_path, groups)
  (tmp_path / folders.FOLDER_GROUND_TRUTH).write_text(
    json.dumps({'groups': groups})
  )
  dataset = folders.load_folder(tmp_path)
  assert dataset.images == ('x1.jpg', 'x2.jpg', 'x3.jpg', 'y.jpg')
  np.testing.assert_array_equal(dataset.positives[0], [1, 2])
  np.testing.assert_array_equal(
    dataset.junk[0], [0]
  )  # the query itself is dropped
  assert dataset.positives[3].size == 0  # a singleton group has nothing to find
  ranks = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 0, 1, 3], [3, 0, 1, 2]])
  scores = metrics.evaluate(dataset, ranks)
  assert scores['mAP'] == pytest.approx(
    1.0, abs=1e-12
  )  # the singleton query is skipped
