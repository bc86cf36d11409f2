"""The database's region index and region graph, as a config says.

whitened_descriptors  eq. (6) descriptors of a store, as search compares
build_index           Store -> region_index.RegionIndex (search.index)
build_graph           Store -> graph.RegionGraph of diffusion, on disk,
                      resumable (search.diffusion)
index_expectation / graph_expectation
                      what an index / graph of this store and fit records,
                      checked before it is used (retrieval.search)
"""

import functools

import jax.numpy as jnp
import numpy as np

from regagg_jax.aggregation import pca
from regagg_jax.experiment import settings
from regagg_jax.search import graph
from regagg_jax.search import region_index
from regagg_jax.storage import graphs
from regagg_jax.storage import provenance
from regagg_jax.storage import records


def whitened_descriptors(fitted, store, valid):
  """float32 (N, M, D) eq. (6) descriptors of a store (zeros where invalid);
  a store encoded with whitening is checked against `fitted` and used as is.

  Args:
    fitted: records.Fit (its whitening U^2, s of eq. 6).
    store: records.Store, descriptors (N, M, D_store).
    valid: bool (N, M) regions searched (settings.use_regions).

  Raises:
    ValueError: a store whitened with another fit.
  """
  if not provenance.is_whitened(store.metadata):
    return np.asarray(
      pca.apply(
        fitted.whitening, jnp.asarray(store.descriptors), jnp.asarray(valid)
      )
    )  # eq. (6)
  stored = store.metadata['whitening_hash']
  if stored != records.hash_params(fitted.whitening):
    raise ValueError(
      f'the store was whitened with {stored}, not with this '
      f'fit ({records.hash_params(fitted.whitening)}); encode '
      'it again'
    )
  return np.where(valid[..., None], store.descriptors, np.float32(0))


def index_expectation(database, fitted):
  """What a region index of this store and fit records in its metadata."""
  return {
    'whitening_hash': records.hash_params(fitted.whitening),
    'store_hash': database.metadata['config_hash'],
  }


def build_index(config, database, fitted):
  """FAISS region index (search.index) over a store's whitened regions.

  Returns:
    region_index.RegionIndex, its metadata tied to the store and fit.
  """
  database_valid = settings.use_regions(
    database.valid, whole=not config.pooling.regional
  )
  kind = config.search.index
  return region_index.build(
    whitened_descriptors(fitted, database, database_valid),
    database_valid,
    kind=kind,
    options=config.search[kind].to_dict() if kind in config.search else None,
    metadata=index_expectation(database, fitted),
  )


def graph_expectation(config, database, fitted):
  """What a region graph of this store, fit and config records."""
  section = config.search.diffusion
  return dict(
    index_expectation(database, fitted),
    k=section.k,
    gamma=section.gamma,
    knn=config.search.index,
    num_images=len(database.image_paths),
  )


def build_graph(config, database, fitted, path, regions=None):
  """The mutual kNN region graph of diffusion (graph.mutual_affinity) in
  directory `path`: built shard by shard (storage/graphs.py), resumed
  after a crash, reused when finished.

  Args:
    config: ConfigDict (pooling.regional, search.index, search.diffusion).
    database: records.Store; fitted: records.Fit.
    path: the graph directory.
    regions: region_index.RegionIndex for search.index other than 'exact'
      (the kNN through FAISS, re-scored exactly).

  Returns:
    graph.RegionGraph.
  """
  database_valid = settings.use_regions(
    database.valid, whole=not config.pooling.regional
  )
  section = config.search.diffusion
  k = min(section.k, int(database_valid.sum()) - 1)
  nearest = graph.nearest_regions(
    whitened_descriptors(fitted, database, database_valid),
    database_valid,
    k=k,
    region_index=regions,
  )
  return graph.RegionGraph(
    *graphs.build_graph(
      path,
      nearest,
      functools.partial(graph.mutual_affinity, gamma=section.gamma),
      num_slots=database_valid.size,
      shard_rows=section.shard_rows,
      metadata=graph_expectation(config, database, fitted),
    )
  )
