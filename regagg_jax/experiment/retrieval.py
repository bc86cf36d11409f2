"""Search as a config says: every image scored, or a region index.

  search       queries x Store -> Ranking (eq. 7, eq. 8 with QE)
  build_index  Store -> region_index.RegionIndex (search.index: FAISS kind)

search.index 'exact' scores every database image with eq. (7) (and eq. 8);
'flat', 'ivfpq' or 'hnsw' retrieve the top search.k_regions regions of
each query region from a FAISS index, keep the per-image max, and re-rank
the best search.shortlist images exactly with eq. (7) / eq. (8)
(index_search.search). Stores holding whitened descriptors
(pca.store_whitened) are used as they are, once their whitening is checked
against the fit.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from regagg_jax.evaluation import metrics
from regagg_jax.storage import provenance
from regagg_jax.storage import records
from regagg_jax.aggregation import pca
from regagg_jax.experiment import pipeline
from regagg_jax.search import region_index
from regagg_jax.search import index_search
from regagg_jax.search import similarity


class Ranking(NamedTuple):
  """Search results.

  Attributes:
    scores: float32 (Q, N) eq. (7), or eq. (8) with QE.
    ranks: int64 (Q, N) database rows, best first.
    best: int32 (Q, N) best-matched database region of eq. (7).
  """

  scores: np.ndarray
  ranks: np.ndarray
  best: np.ndarray


def _whitened(fitted, store, valid):
  """float32 (N, M, D) eq. (6) descriptors of a store (zeros where invalid);
  a store encoded with whitening is checked against `fitted` and used as is.
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
  database_valid = pipeline.use_regions(
    database.valid, whole=not config.pooling.regional
  )
  kind = config.search.index
  return region_index.build(
    _whitened(fitted, database, database_valid),
    database_valid,
    kind=kind,
    options=config.search[kind].to_dict() if kind in config.search else None,
    metadata=index_expectation(database, fitted),
  )


def search(config, queries, database, fitted, regions=None):
  """Ranks a database store for every image of a query store.

  search.index 'exact' scores every image (eq. 7); a FAISS kind shortlists
  search.shortlist images per query from their top search.k_regions
  regions and re-ranks them exactly (`index_search.search`); the rest of
  the database follows in row order with score -inf.

  Args:
    config: ConfigDict (pooling.regional, search section).
    queries: records.Store of the queries, encoded with the database's U^1.
    database: records.Store.
    fitted: records.Fit of the database's config.
    regions: region_index.RegionIndex of the database (`build_index`),
      needed unless search.index is 'exact'.

  Returns:
    Ranking.

  Raises:
    ValueError: stores, fit or index from different configs.
  """
  pipeline.check_fit(config, database, fitted)
  pipeline.check_store(config, queries, 'query')
  if queries.metadata['reduction_hash'] != database.metadata['reduction_hash']:
    raise ValueError(
      'the queries were encoded with another U^1 (eq. 4) than '
      'the database; encode them with '
      'reduction=database.reduction'
    )
  whole = not config.pooling.regional
  query_valid = pipeline.use_regions(
    queries.valid,
    whole=whole or pipeline.QUERY_REGIONS[config.search.query_regions],
  )
  database_valid = pipeline.use_regions(database.valid, whole=whole)
  query = _whitened(fitted, queries, query_valid)
  target = _whitened(fitted, database, database_valid)
  search_config = config.search
  n_qe = min(search_config.n_qe, len(database.image_paths))
  if search_config.index != 'exact':
    if regions is None:
      raise ValueError(
        f'search.index={search_config.index!r} needs the '
        "database's region index (build_index)"
      )
    provenance.check_stale(
      'the region index',
      regions.metadata,
      index_expectation(database, fitted),
      'build it again',
    )
    return _complete(
      *index_search.search(
        regions,
        target,
        database_valid,
        query,
        query_valid,
        k_regions=search_config.k_regions,
        shortlist=search_config.shortlist,
        qe=search_config.qe,
        n_qe=n_qe,
        include_query=search_config.qe_include_query,
        rescore=search_config.rescore,
      ),
      len(target),
    )
  scores, best = similarity.image_similarity(  # eq. (7)
    query,
    query_valid,
    target,
    database_valid,
    chunk_size=search_config.chunk_size,
  )
  if search_config.qe:
    scores = similarity.query_expansion(  # eq. (8)
      query,
      target,
      database_valid,
      scores,
      best,
      n_qe=n_qe,
      include_query=search_config.qe_include_query,
      query_valid=jnp.asarray(query_valid),
      chunk_size=search_config.chunk_size,
    )
  scores = np.asarray(scores)
  return Ranking(scores, metrics.ranks_from_scores(scores), np.asarray(best))


def _complete(scores, ranks, best, num_images):
  """Shortlist results (Q, S) -> a Ranking over all N images: shortlisted
  images first, then the rest in row order at score -inf."""
  full_scores = np.full((len(ranks), num_images), -np.inf, np.float32)
  full_best = np.zeros((len(ranks), num_images), np.int32)
  full_ranks = np.empty((len(ranks), num_images), np.int64)
  for q, row in enumerate(ranks):
    found = row[row >= 0]
    full_scores[q, found] = scores[q, : len(found)]
    full_best[q, found] = best[q, : len(found)]
    rest = np.setdiff1d(np.arange(num_images), found, assume_unique=True)
    full_ranks[q] = np.concatenate([found, rest])
  return Ranking(full_scores, full_ranks, full_best)
