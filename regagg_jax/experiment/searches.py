"""A run's searches: the region index and graph kept in the workdir.

  search_index   the database's FAISS region index
  search_graph   the database's region graph (diffusion)
  rank           retrieval.search with the index and graph
  dataset_ranks  store-row rankings -> dataset indices

Indexes live in <workdir>/indexes and diffusion's region graphs in
<workdir>/graphs, named by the store and fit hashes, their options and the
database's image contents (fingerprints_hash); a finished one is reused
when it matches, a damaged or stale one is made again.
"""

import os
import shutil

from absl import logging
import numpy as np

from regagg_jax.experiment import indexing
from regagg_jax.experiment import settings
from regagg_jax.experiment import retrieval
from regagg_jax.experiment import stores
from regagg_jax.experiment import workspace
from regagg_jax.search import graph
from regagg_jax.search import region_index
from regagg_jax.search import rerank
from regagg_jax.storage import graphs
from regagg_jax.storage import records


def _contents(database):
  """What an index or graph is named by besides settings: the database's
  image contents (stores.dataset_store's fingerprints_hash)."""
  return database.metadata.get('fingerprints_hash')


def search_index(config, dataset, database, fitted):
  """The database's FAISS region index (search.index), built once and kept
  in workdir/indexes; None for search.index 'exact'."""
  if config.search.index == 'exact':
    return None
  kind = config.search.index
  options = config.search[kind].to_dict() if kind in config.search else {}
  name = (
    f'{dataset.name}-{settings.store_hash(config)}-'
    f'{settings.fit_hash(config)}-{kind}-'
    f'{records.hash_config([options, _contents(database)])}'
  )
  expected = dict(
    indexing.index_expectation(database, fitted),
    num_images=len(database.image_paths),
  )
  return workspace.cached(
    os.path.join(config.workdir, 'indexes', name),
    lambda: indexing.build_index(config, database, fitted),
    expected,
    load=region_index.load,
    save=region_index.save,
  )


def search_graph(config, dataset, database, fitted, regions=None):
  """The database's region graph of diffusion (search.rerank 'diffusion'),
  built once (resumably) and kept in workdir/graphs, named by the store's
  hash like the fits; a damaged one is built again. None for other
  re-rankings."""
  if not rerank.RERANK[retrieval.rerank_name(config.search)].diffusion:
    return None
  expected = indexing.graph_expectation(config, database, fitted)
  name = (
    f'{dataset.name}-{settings.store_hash(config)}-'
    f'{settings.fit_hash(config)}-'
    f'{records.hash_config([expected, _contents(database)])}'
  )
  path = os.path.join(config.workdir, 'graphs', name)

  def finished(path):
    if not os.path.isfile(os.path.join(path, 'metadata.json')):
      return None
    try:
      return graph.RegionGraph(*graphs.load_graph(path, expected=expected))
    except ValueError as error:  # damaged or stale: built again
      logging.warning('replacing %s: %s', path, error)
      shutil.rmtree(path)
      return None

  return stores.made_once(
    path,
    finished,
    lambda: indexing.build_graph(config, database, fitted, path, regions),
    lambda *_: None,  # build_graph writes it shard by shard
    f'made {path}',
  )


def rank(config, dataset, queries, database, fitted):
  """retrieval.search with the database's region index and region graph
  (`search_index`, `search_graph`: made once, None when not needed)."""
  regions = search_index(config, dataset, database, fitted)
  return retrieval.search(
    config,
    queries,
    database,
    fitted,
    regions,
    search_graph(config, dataset, database, fitted, regions),
  )


def dataset_ranks(ranking, database, positions):
  """Store-row rankings -> int (Q, N') dataset indices, one row per query.

  An unreadable query (position -1) gets the database in index order.
  """
  rows = np.asarray(database.metadata['rows'], np.int64)
  ranks = np.tile(rows, (len(positions), 1))
  present = positions >= 0
  ranks[present] = rows[ranking.ranks[positions[present]]]
  return ranks
