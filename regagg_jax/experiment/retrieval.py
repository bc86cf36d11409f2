"""Search as a config says: every image scored, or a region index.

  search       queries x Store -> Ranking (eq. 7, then search.rerank)
  rerank_name  the search.rerank value in force (search.qe is 'qe')
  matched_query_regions  the query's side of eq. 7's best region pairs

search.index 'exact' scores every database image with eq. (7) (and eq. 8);
'flat', 'ivfpq' or 'hnsw' retrieve the top search.k_regions regions of
each query region from a FAISS index, keep the per-image max, and re-rank
the best search.shortlist images exactly with eq. (7) / eq. (8)
(index_search.search). search.rerank (rerank.RERANK) then re-ranks: 'qe'
(eq. 8; also search.qe=True), 'alpha_qe' (search.alpha_qe: n results
weighted by s^alpha, with the query) or 'diffusion' (search.diffusion:
the top `truncate` images by regional diffusion on the graph of the
database's regions, built exactly for search.index 'exact', else through
the region index). Stores holding whitened descriptors
(pca.store_whitened) are used as they are, once their whitening is checked
against the fit.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from regagg_jax.evaluation import precision
from regagg_jax.experiment import indexing
from regagg_jax.experiment import settings
from regagg_jax.search import diffusion
from regagg_jax.search import index_search
from regagg_jax.search import rerank
from regagg_jax.search import similarity
from regagg_jax.storage import provenance


class Ranking(NamedTuple):
  """Search results.

  Attributes:
    scores: float32 (Q, N) eq. (7), or after search.rerank (eq. 8, alpha-QE,
      diffusion; -inf outside diffusion's candidates).
    ranks: int64 (Q, N) database rows, best first.
    best: int32 (Q, N) best-matched database region of eq. (7).
  """

  scores: np.ndarray
  ranks: np.ndarray
  best: np.ndarray


def matched_query_regions(config, queries, database, fitted, ranking, top):
  """int (Q, top) query region m of eq. (7)'s best pair (m, m') with each
  of a query's first `top` ranked results (m' = ranking.best), for
  figures."""
  query_valid = settings.use_regions(
    queries.valid, whole=not config.pooling.regional
  )
  rows = np.asarray(ranking.ranks)[:, :top]  # (Q, R)
  flat = rows.ravel()
  results = database._replace(
    descriptors=database.descriptors[flat], valid=database.valid[flat]
  )
  regions = np.take_along_axis(np.asarray(ranking.best), rows, 1).ravel()
  targets = indexing.whitened_descriptors(fitted, results, results.valid)[
    np.arange(flat.size), regions
  ].reshape(*rows.shape, -1)  # (Q, R, D) regions m'
  similarity = np.einsum(
    'qmd,qrd->qrm',
    indexing.whitened_descriptors(fitted, queries, query_valid),
    targets,
  )
  return np.argmax(
    np.where(query_valid[:, None, :], similarity, -np.inf), axis=-1
  )


def rerank_name(search_config):
  """The search.rerank in force: 'qe' when search.qe is set.

  Raises:
    ValueError: an unknown value, or search.qe with another rerank.
  """
  name = search_config.rerank
  if name not in rerank.RERANK:
    raise ValueError(
      f'search.rerank must be one of {sorted(rerank.RERANK)}, got {name!r}'
    )
  if search_config.qe and name not in ('none', 'qe'):
    raise ValueError(
      f'search.qe=True is search.rerank=qe; it cannot be combined with '
      f'search.rerank={name!r}'
    )
  return 'qe' if search_config.qe else name


def _expansion(search_config, num_images):
  """similarity.query_expansion keywords of search.rerank, or None."""
  method = rerank.RERANK[rerank_name(search_config)]
  if not method.expansion:
    return None
  if method.alpha_weighted:
    return dict(
      n_qe=min(search_config.alpha_qe.n, num_images),
      include_query=True,
      alpha=search_config.alpha_qe.alpha,
    )
  return dict(
    n_qe=min(search_config.n_qe, num_images),
    include_query=search_config.qe_include_query,
    alpha=0.0,
  )


def diffusion_options(search_config):
  """diffusion.DiffusionOptions of search.diffusion."""
  section = search_config.diffusion
  return diffusion.DiffusionOptions(
    alpha=section.alpha,
    gamma=section.gamma,
    query_neighbours=section.query_neighbours,
    iterations=section.iterations,
    tolerance=section.tolerance,
    pooling=section.pooling,
  )


def search(config, queries, database, fitted, regions=None, region_graph=None):
  """Ranks a database store for every image of a query store.

  search.index 'exact' scores every image (eq. 7); a FAISS kind shortlists
  search.shortlist images per query from their top search.k_regions
  regions and re-ranks them exactly (`index_search.search`); the rest of
  the database follows in row order with score -inf. search.rerank then
  re-ranks (module doc).

  Args:
    config: ConfigDict (pooling.regional, search section).
    queries: records.Store of the queries, encoded with the database's U^1.
    database: records.Store.
    fitted: records.Fit of the database's config.
    regions: region_index.RegionIndex of the database (`build_index`),
      needed unless search.index is 'exact'.
    region_graph: graph.RegionGraph of the database (`build_graph`), needed
      for search.rerank 'diffusion'.

  Returns:
    Ranking.

  Raises:
    ValueError: stores, fit or index from different configs.
  """
  settings.check_fit(config, database, fitted)
  settings.check_store(config, queries, 'query')
  if queries.metadata['reduction_hash'] != database.metadata['reduction_hash']:
    raise ValueError(
      'the queries were encoded with another U^1 (eq. 4) than '
      'the database; encode them with '
      'reduction=database.reduction'
    )
  whole = not config.pooling.regional
  query_valid = settings.use_regions(
    queries.valid,
    whole=whole or settings.QUERY_REGIONS[config.search.query_regions],
  )
  database_valid = settings.use_regions(database.valid, whole=whole)
  query = indexing.whitened_descriptors(fitted, queries, query_valid)
  target = indexing.whitened_descriptors(fitted, database, database_valid)
  search_config = config.search
  expansion = _expansion(search_config, len(database.image_paths))
  if rerank.RERANK[rerank_name(search_config)].diffusion:
    if region_graph is None:
      raise ValueError(
        "search.rerank='diffusion' needs the database's region graph "
        '(build_graph)'
      )
    provenance.check_stale(
      'the region graph',
      region_graph.metadata,
      indexing.graph_expectation(config, database, fitted),
      'build it again',
    )
  if search_config.index != 'exact':
    if regions is None:
      raise ValueError(
        f'search.index={search_config.index!r} needs the '
        "database's region index (build_index)"
      )
    provenance.check_stale(
      'the region index',
      regions.metadata,
      indexing.index_expectation(database, fitted),
      'build it again',
    )
    ranking = _complete(
      *index_search.search(
        regions,
        target,
        database_valid,
        query,
        query_valid,
        k_regions=search_config.k_regions,
        shortlist=search_config.shortlist,
        qe=expansion is not None,
        **(expansion or {}),
        rescore=search_config.rescore,
      ),
      len(target),
    )
  else:
    scores, best = similarity.image_similarity(  # eq. (7)
      query,
      query_valid,
      target,
      database_valid,
      chunk_size=search_config.chunk_size,
    )
    if expansion is not None:
      scores = similarity.query_expansion(  # eq. (8), alpha-QE
        query,
        target,
        database_valid,
        scores,
        best,
        query_valid=jnp.asarray(query_valid),
        chunk_size=search_config.chunk_size,
        **expansion,
      )
    scores = np.asarray(scores)
    ranking = Ranking(
      scores, precision.ranks_from_scores(scores), np.asarray(best)
    )
  if not rerank.RERANK[rerank_name(search_config)].diffusion:
    return ranking
  scores, ranks = rerank.rerank_diffusion(
    query,
    query_valid,
    target,
    database_valid,
    ranking.scores,
    region_graph.neighbours,
    region_graph.weights,
    truncate=search_config.diffusion.truncate,
    options=diffusion_options(search_config),
  )
  return Ranking(scores, ranks, ranking.best)


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
