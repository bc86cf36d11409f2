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
from regagg_jax.experiment import fitting
from regagg_jax.experiment import modes
from regagg_jax.experiment import retrieval
from tests import conftest
from tests.experiment.synthetic import config_with
from tests.experiment.synthetic import synthetic_store
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


def _whiten64(params, x, valid):
  """Reference eq. (6): l2(diag(scale) U^T (x - mean)), zero if invalid."""
  mean, components, scale = (np.asarray(a, np.float64) for a in params)
  y = ((x.astype(np.float64) - mean) @ components) * scale
  norm = np.linalg.norm(y, axis=-1, keepdims=True)
  y = y / np.where(norm > 0, norm, 1)
  return np.where(valid[..., None], y, 0)


def _search64(query, query_valid, database, database_valid, n_qe=None):
  """Reference eq. (7), and eq. (8) when n_qe is given, with loops."""
  num_q, num_n = len(query), len(database)
  scores = np.full((num_q, num_n), -np.inf)
  best = np.zeros((num_q, num_n), int)
  for q in range(num_q):
    for n in range(num_n):
      for i in np.flatnonzero(query_valid[q]):
        for j in np.flatnonzero(database_valid[n]):
          value = query[q, i] @ database[n, j]
          if value > scores[q, n]:
            scores[q, n], best[q, n] = value, j
  if n_qe is None:
    return scores, best
  expanded = np.full_like(scores, -np.inf)
  for q in range(num_q):
    top = np.argsort(-scores[q], kind='stable')[:n_qe]
    mean = sum(database[t, best[q, t]] for t in top)
    mean = mean / np.linalg.norm(mean)
    for n in range(num_n):
      for j in np.flatnonzero(database_valid[n]):
        expanded[q, n] = max(expanded[q, n], mean @ database[n, j])
  return expanded, best


@pytest.mark.parametrize('regional', [True, False])
@pytest.mark.parametrize('query_regions', ['all', 'whole'])
@pytest.mark.parametrize('qe', [False, True])
def test_search_matches_float64_reference(regional, query_regions, qe):
  config = config_with(
    pooling__regional=regional,
    search__query_regions=query_regions,
    search__qe=qe,
    search__n_qe=3,
    search__chunk_size=4,
    pca__dim=5,
  )
  rng = np.random.default_rng(0)
  database = synthetic_store(config, rng)
  queries = synthetic_store(config, rng, num_images=4)
  fitted = fitting.fit(config, database, fitted_on='synthetic')
  ranking = retrieval.search(config, queries, database, fitted)

  last = np.arange(4) == 3
  database_valid = database.valid & (last if not regional else True)
  whole_query = not regional or query_regions == 'whole'
  query_valid = queries.valid & (last if whole_query else True)
  expected, expected_best = _search64(
    _whiten64(fitted.whitening, queries.descriptors, query_valid),
    query_valid,
    _whiten64(fitted.whitening, database.descriptors, database_valid),
    database_valid,
    n_qe=3 if qe else None,
  )
  assert ranking.scores.shape == (4, 9) and ranking.scores.dtype == np.float32
  np.testing.assert_allclose(ranking.scores, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ranking.best, expected_best)
  np.testing.assert_array_equal(
    ranking.ranks, np.argsort(-ranking.scores, axis=1, kind='stable')
  )
