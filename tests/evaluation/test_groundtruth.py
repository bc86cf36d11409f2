"""Tests of evaluation/groundtruth.py: hostile pickles and groundtruth.json."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import sources
from regagg_jax.evaluation import folders
from regagg_jax.evaluation import groundtruth

GND = datasets.DEFAULT_GROUND_TRUTH_ROOT


class _Payload:
  """Unpickles as os.system(command): what a tampered gnd file would run."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    import os

    return os.system, (self.command,)


def test_pickle_running_a_command_is_refused_and_nothing_runs(tmp_path):
  marker = tmp_path / 'ran'
  folder = tmp_path / 'roxford5k'
  folder.mkdir()
  path = folder / 'gnd_roxford5k.pkl'
  path.write_bytes(
    pickle.dumps({'imlist': [], 'gnd': _Payload(f'touch {marker}')})
  )
  with pytest.raises(groundtruth.GroundTruthError) as error:
    datasets.load_benchmark('roxford5k', ground_truth_root=tmp_path)
  assert str(path) in str(error.value)
  assert 'posix.system' in str(error.value) or 'os.system' in str(error.value)
  assert not marker.exists()


def test_pickle_with_numpy_arrays_loads(tmp_path):
  value = {'bbx': np.arange(4.0), 'n': np.int64(3)}
  path = tmp_path / 'g.pkl'
  path.write_bytes(pickle.dumps(value))
  loaded = groundtruth.load_pickle(path)
  np.testing.assert_array_equal(loaded['bbx'], value['bbx'])
  assert loaded['n'] == 3


def test_truncated_pickle_names_the_file(tmp_path):
  path = tmp_path / 'g.pkl'
  path.write_bytes(pickle.dumps({'a': list(range(100))})[:20])
  with pytest.raises(groundtruth.GroundTruthError, match=str(path)):
    groundtruth.load_pickle(path)


@pytest.mark.skipif(not GND.is_dir(), reason='no shared ground truth')
@pytest.mark.parametrize('name', ['roxford5k', 'rparis6k'])
def test_official_pickles_load_with_the_restricted_unpickler(name):
  data = groundtruth.load_pickle(GND / name / f'gnd_{name}.pkl')
  assert len(data['qimlist']) == 70 and len(data['gnd']) == 70


def _folder(tmp_path, spec, names=('a/x.jpg', 'b/x.jpg', 'c.jpg', 'd.jpg')):
  for name in names:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  path = tmp_path / folders.FOLDER_GROUND_TRUTH
  path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
  return path


def _query(**fields):
  return {'image': 'c.jpg', 'positives': ['d.jpg'], **fields}


def _refused(tmp_path, spec, *words):
  path = _folder(tmp_path, spec)
  with pytest.raises(groundtruth.GroundTruthError) as error:
    folders.load_folder(tmp_path)
  message = str(error.value)
  assert message.startswith(str(path))
  for word in words:
    assert word in message, message


@pytest.mark.parametrize('name', ['../../etc/passwd', 'a/../../x.jpg'])
def test_name_escaping_the_folder(tmp_path, name):
  spec = {'queries': [_query(image=name)]}
  _refused(tmp_path, spec, 'query 0', '"image"', 'relative path inside')


def test_absolute_name(tmp_path):
  spec = {'queries': [_query(positives=['/etc/shadow'])]}
  _refused(tmp_path, spec, "query 0 ('c.jpg')", '"positives"', '/etc/shadow')


def test_absolute_name_in_images(tmp_path):
  _refused(
    tmp_path,
    {'images': ['/etc/shadow'], 'queries': []},
    '"images"',
    'relative path',
  )


def test_name_in_groups_escaping_the_folder(tmp_path):
  _refused(tmp_path, {'groups': {'../x.jpg': 'g'}}, '"groups"', '../x.jpg')


def test_names_matched_exactly_never_by_basename(tmp_path):
  _folder(tmp_path, {'images': ['a/x.jpg', 'c.jpg'], 'queries': []})
  (tmp_path / 'a' / 'x.jpg').unlink()
  dataset = folders.load_folder(tmp_path)
  with pytest.raises(sources.DatasetNotFoundError, match='a/x.jpg'):
    datasets.database_paths(dataset)  # b/x.jpg is not taken instead


def test_duplicate_images(tmp_path):
  _refused(
    tmp_path,
    {'images': ['c.jpg', 'd.jpg', 'c.jpg'], 'queries': []},
    '"images"',
    'repeats',
    'c.jpg',
  )


def test_duplicate_positives(tmp_path):
  spec = {'queries': [_query(positives=['d.jpg', 'd.jpg'])]}
  _refused(tmp_path, spec, 'query 0', '"positives"', 'repeats')


def test_duplicate_queries(tmp_path):
  _refused(tmp_path, {'queries': [_query(), _query()]}, '"image"', 'repeats')


def test_duplicate_group_keys(tmp_path):
  _refused(tmp_path, '{"groups": {"c.jpg": "g", "c.jpg": "h"}}', 'repeated')


@pytest.mark.parametrize(
  'box, words',
  [
    ([0, 0, 'NaN'], ['4 numbers']),
    ([0, 0, 5], ['4 numbers']),
    ('0,0,5,5', ['4 numbers']),
    ([0, 0, True, 5], ['4 numbers']),
    ([0, float('nan'), 5, 5], ['not finite']),
    ([0, 0, float('inf'), 5], ['not finite']),
    ([5, 0, 1, 5], ['x1 < x2']),
    ([0, 5, 5, 5], ['y1 < y2']),
    ([-3, 0, 5, 5], ['0 <= x1']),
  ],
)
def test_bad_box(tmp_path, box, words):
  spec = {'queries': [_query(box=box)]}
  _refused(tmp_path, spec, "query 0 ('c.jpg')", '"box"', *words)


def test_boxes_on_some_queries_only(tmp_path):
  spec = {
    'queries': [_query(box=[0, 0, 5, 5]), _query(image='d.jpg', positives=[])]
  }
  _refused(tmp_path, spec, '"box"', '1 of 2', 'd.jpg')


def test_string_where_a_list_belongs(tmp_path):
  spec = {'queries': [_query(positives='d.jpg')]}
  _refused(tmp_path, spec, "query 0 ('c.jpg')", '"positives"', 'list')


def test_queries_not_a_list(tmp_path):
  _refused(tmp_path, {'queries': {'image': 'c.jpg'}}, '"queries"', 'list')


def test_query_not_an_object(tmp_path):
  _refused(tmp_path, {'queries': ['c.jpg']}, 'query 0', '"image"')


def test_unknown_field(tmp_path):
  _refused(tmp_path, {'queries': [_query(boxes=[1])]}, 'unknown', 'boxes')


def test_malformed_json(tmp_path):
  _refused(tmp_path, '{"queries": [', 'not valid JSON')


def test_not_an_object(tmp_path):
  _refused(tmp_path, '[1, 2]', '"groups" or "queries"')


def test_positive_outside_images(tmp_path):
  spec = {'images': ['c.jpg'], 'queries': [_query()]}
  _refused(tmp_path, spec, "query 0 ('c.jpg')", '"positives"', 'd.jpg')


def test_valid_file_with_boxes_reads(tmp_path):
  spec = {
    'queries': [
      _query(box=[1, 2, 30, 40], junk=['a/x.jpg']),
      _query(image='b/x.jpg', positives=['c.jpg'], box=[0, 0, 5.5, 6]),
    ]
  }
  _folder(tmp_path, spec)
  dataset = folders.load_folder(tmp_path)
  np.testing.assert_array_equal(dataset.boxes, [[1, 2, 30, 40], [0, 0, 5.5, 6]])
  assert dataset.queries == ('c.jpg', 'b/x.jpg')
  assert datasets.query_paths(dataset) == [
    Path(tmp_path) / 'c.jpg',
    Path(tmp_path) / 'b/x.jpg',
  ]
