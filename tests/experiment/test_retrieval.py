"""Tests of search.rerank through experiment.retrieval: the option's
checks, and re-ranked --mode=eval / --mode=search on a small folder."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import folder as folder_config
from regagg_jax.experiment import modes
from regagg_jax.experiment import retrieval
from tests import conftest
from tests.experiment.test_indexing import make_store


def _search_section(**fields):
  section = ml_collections.ConfigDict({'qe': False, 'rerank': 'none'})
  section.update(fields)
  return section


def test_rerank_name_maps_qe_and_refuses_bad_values():
  assert retrieval.rerank_name(_search_section()) == 'none'
  assert retrieval.rerank_name(_search_section(qe=True)) == 'qe'
  assert retrieval.rerank_name(_search_section(rerank='diffusion')) == (
    'diffusion'
  )
  with pytest.raises(ValueError, match='must be one of'):
    retrieval.rerank_name(_search_section(rerank='dfs'))
  with pytest.raises(ValueError, match='cannot be combined'):
    retrieval.rerank_name(_search_section(qe=True, rerank='alpha_qe'))


def _folder(tmp_path, sample_paths, count=8):
  photos = tmp_path / 'photos'
  photos.mkdir()
  for path in sample_paths[:count]:
    shutil.copy(path, photos)
  groups = {
    p.name: f'object{int(p.stem[7:]) // 4}' for p in sample_paths[:count]
  }
  (photos / 'groundtruth.json').write_text(json.dumps({'groups': groups}))
  return photos


@pytest.mark.weights
@pytest.mark.slow
def test_diffusion_and_alpha_qe_eval_on_a_folder(tmp_path, sample_paths):
  photos = _folder(tmp_path, sample_paths)
  config = folder_config.get_config(str(photos))
  config.workdir = str(tmp_path / 'work')
  config.search.rerank = 'diffusion'
  config.search.diffusion.k = 10  # ~60 regions: k = 200 would join them all
  config.search.diffusion.query_neighbours = 10
  result = modes.evaluate(config)
  assert result['rerank'] == 'diffusion' and result['num_queries'] == 8
  assert 0.0 < result['mAP'] <= 1.0
  graphs_dir = tmp_path / 'work' / 'graphs'
  (graph_dir,) = graphs_dir.iterdir()
  assert (graph_dir / 'metadata.json').is_file()
  assert not list(graph_dir.glob('knn_*'))  # stage 1 removed when done
  stamp = os.path.getmtime(graph_dir / 'metadata.json')
  again = modes.evaluate(config)  # the graph is reused, the result equal
  assert os.path.getmtime(graph_dir / 'metadata.json') == stamp
  assert again['per_query_ap'] == result['per_query_ap']
  config.search.rerank = 'alpha_qe'
  assert modes.evaluate(config)['rerank'] == 'alpha_qe'


@pytest.mark.weights
@pytest.mark.slow
def test_diffusion_search_mode_through_run_py(tmp_path, sample_paths):
  photos = _folder(tmp_path, sample_paths)
  done = subprocess.run(
    [
      sys.executable,
      'run.py',
      f'--config=configs/folder.py:{photos}',
      f'--config.workdir={tmp_path / "work"}',
      '--mode=search',
      f'--config.search.queries={photos / sample_paths[0].name}',
      '--config.search.rerank=diffusion',
      '--config.search.diffusion.k=10',
      '--config.search.diffusion.query_neighbours=10',
    ],
    cwd=conftest.REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'best {photos / sample_paths[0].name}' in done.stdout
  assert list((tmp_path / 'work' / 'graphs').iterdir())


def test_matched_query_regions_against_numpy():
  """The query side m of eq. (7)'s pair (m, best) with each top result."""
  from regagg_jax.aggregation import pca  # pylint: disable=g-import-not-at-top
  from regagg_jax.storage import records  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(3)
  queries, database = make_store(rng, 3), make_store(rng, 6)
  whitening = pca.PCAParams(
    np.zeros(5, np.float32), np.eye(5, dtype=np.float32), np.ones(5, np.float32)
  )
  fitted = records.Fit(reduction=None, whitening=whitening, metadata={})
  ranks = np.array([rng.permutation(6) for _ in range(3)])
  best = np.array(  # a valid database region per pair
    [[rng.choice(np.flatnonzero(v)) for v in database.valid]] * 3, np.int32
  )
  ranking = retrieval.Ranking(np.zeros((3, 6), np.float32), ranks, best)
  config = ml_collections.ConfigDict({'pooling': {'regional': True}})
  got = retrieval.matched_query_regions(
    config, queries, database, fitted, ranking, 4
  )
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  x = unit(queries.descriptors.astype(np.float64))
  y = unit(database.descriptors.astype(np.float64))
  assert got.shape == (3, 4)
  for q in range(3):
    for j, row in enumerate(ranks[q, :4]):
      similarity = x[q] @ y[row, best[q, row]]
      similarity[~queries.valid[q]] = -np.inf
      assert got[q, j] == np.argmax(similarity), (q, j)
