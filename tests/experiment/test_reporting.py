"""Tests for regagg_jax.experiment.reporting: the paper's method names, the
results table, results files never overwritten, per-query AP."""

import json
import os

import ml_collections
import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.experiment import reporting
from regagg_jax.storage import atomic
from regagg_jax.storage import records
from tests.evaluation.test_precision import reference_ap


@pytest.mark.parametrize(
  'method, regional, qe, name',
  [
    ('o2', True, False, 'O2_R'),
    ('o2', False, True, 'O2_W+QE'),
    ('o1', False, False, 'O1_W'),
    ('crow', True, False, 'CroW'),  # global: no _R / _W
    ('rmac', False, True, 'R-MAC+QE'),
  ],
)
def test_method_name_is_the_papers(method, regional, qe, name):
  assert reporting.method_name(method, regional, qe) == name


def test_print_table_right_aligns_and_rounds_floats(capsys):
  rows = [{'method': 'O2_R', 'mAP': 0.91234}, {'method': 'CroW', 'mAP': 1.0}]
  reporting.print_table('Oxford5k', rows, ('method', 'mAP'))
  lines = capsys.readouterr().out.splitlines()
  assert lines == [
    '',
    'Oxford5k',
    'method |    mAP',
    '  O2_R | 0.9123',
    '  CroW | 1.0000',
  ]


def _config(workdir, dim=16):
  return ml_collections.ConfigDict(
    {'name': 'demo', 'workdir': str(workdir), 'pca': {'dim': dim}}
  )


def test_new_results_never_reuses_a_name(tmp_path):
  config = _config(tmp_path)
  digest = records.hash_config(reporting.resolved(config))[:8]
  first = reporting.new_results(config, prefix='eval-')
  assert first == os.path.join(tmp_path, 'results', f'eval-demo-{digest}')
  assert reporting.new_results(config, prefix='eval-') == first  # unused
  atomic.write_json(first + '.json', {'mAP': 0.5})  # as the modes do
  with open(first + '.json') as stream:
    assert json.load(stream) == {'mAP': 0.5}
  second = reporting.new_results(config, prefix='eval-')
  assert second == first + '-2'
  open(second + '.png', 'wb').close()  # a figure alone also takes the name
  assert reporting.new_results(config, prefix='eval-') == first + '-3'
  assert reporting.new_results(_config(tmp_path, dim=32)) != first


def test_resolved_is_plain_json_with_references_resolved():
  config = ml_collections.ConfigDict({'a': 2, 'b': {'c': (1, 2)}})
  config.d = config.get_ref('a')
  assert reporting.resolved(config) == {'a': 2, 'b': {'c': [1, 2]}, 'd': 2}


def _dataset(protocol):
  return datasets.Dataset(
    'folder',
    protocol,
    images=('a', 'b', 'c', 'd', 'e'),
    queries=('q0', 'q1', 'q2'),
    query_indices=np.array([0, 1, 2]),
    boxes=None,
    positives=(np.array([2, 4]), np.array([0, 3]), np.array([1, 3])),
    junk=(np.array([1]), np.zeros(0, np.int64), np.zeros(0, np.int64)),
  )


@pytest.mark.parametrize('protocol', ['custom', 'holidays'])
def test_per_query_ap_of_the_scored_queries(protocol):
  dataset = _dataset(protocol)
  ranks = np.array([[4, 1, 0, 2, 3], [0, 1, 2, 3, 4], [2, 3, 1, 0, 4]])
  scored = np.array([True, False, True])  # q1 unreadable
  present = np.array([0, 1, 2, 4])  # image 3 unreadable
  got = reporting.per_query_ap(dataset, ranks, scored, present)
  assert list(got) == ['q0', 'q2']
  for q, name in ((0, 'q0'), (2, 'q2')):
    positives = [p for p in dataset.positives[q] if p in present]
    junk = list(dataset.junk[q])
    if protocol == 'holidays':  # the query itself is ignored
      junk.append(dataset.query_indices[q])
    assert got[name] == pytest.approx(reference_ap(ranks[q], positives, junk))


def test_print_fit_prints_only_a_note(capsys):
  reporting.print_fit(records.Fit(None, None, {'note': 'D capped at 8'}))
  reporting.print_fit(records.Fit(None, None, {}))
  assert capsys.readouterr().out == 'note: D capped at 8\n'
