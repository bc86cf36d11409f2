"""searches: store rows -> dataset indices, and no index or graph where
search.index / search.rerank do not ask for one."""

import numpy as np

from configs import quick
from regagg_jax.experiment import retrieval
from regagg_jax.experiment import searches
from regagg_jax.storage import records


def test_dataset_ranks_maps_rows_and_unreadable_queries():
  ranking = retrieval.Ranking(
    scores=None, best=None, ranks=np.array([[2, 0, 1], [1, 2, 0]])
  )
  database = records.Store(
    None, None, None, None, (), None, {'rows': [0, 2, 5]}
  )  # rows 1, 3, 4 unreadable
  ranks = searches.dataset_ranks(ranking, database, np.array([1, -1, 0]))
  np.testing.assert_array_equal(ranks, [[2, 5, 0], [0, 2, 5], [5, 0, 2]])


def test_exact_search_without_diffusion_makes_no_index_or_graph(tmp_path):
  config = quick.get_config()
  config.workdir = str(tmp_path)
  config.search.index = 'exact'
  config.search.rerank = 'alpha_qe'
  assert searches.search_index(config, None, None, None) is None
  assert searches.search_graph(config, None, None, None) is None
  assert not list(tmp_path.iterdir())
