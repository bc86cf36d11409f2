"""Search of a region index: exact re-scoring, eq. (7) / eq. (8) re-rank.

`search` takes the top `k_regions` regions of every valid query region from a
`region_index.RegionIndex`, re-scores every retrieved region exactly against
all the query's regions (the stored vector is read from `database`:
approximate PQ scores cannot order near-equal distractors), keeps the
per-image max (a lower bound of eq. 7), and re-ranks the best `shortlist`
images EXACTLY with eq. (7) on their gathered float32 descriptors (and, with
`qe`, eq. 8 on that shortlist), all queries of a batch at once under
`jax.vmap`.

Public: search, search_parameters.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.search import region_index as region_index_lib
from regagg_jax.search import similarity


def search_parameters(region_index, nprobe=None, ef_search=None):
  """FAISS per-call search parameters (the index itself is not modified):
  nprobe / ef_search, or the index's options where None."""
  kind = region_index.metadata['kind']
  options = region_index.metadata['options']
  faiss = region_index_lib.load_faiss()
  if kind == 'hnsw':
    return faiss.SearchParametersHNSW(
      efSearch=ef_search or options['ef_search']
    )
  if kind == 'ivfpq':
    quantizer = (
      faiss.SearchParametersHNSW(efSearch=options['quantizer_ef_search'])
      if options['coarse'] == 'hnsw'
      else None
    )
    return faiss.SearchParametersIVF(
      nprobe=nprobe or options['nprobe'], quantizer_params=quantizer
    )
  return None


def _bucket(size):
  """Padded row count for `size` rows: >= 256, 4 steps per octave (<= 25 %
  padding), so that `_hit_scores` compiles for few shapes."""
  if size <= 256:
    return 256
  step = 64 << int(np.ceil(np.log2(size / 256)) - 1)
  return -(-size // step) * step


@jax.jit
def _hit_scores(vectors, regions, regions_valid):
  """VecSim of eq. (7) of retrieved regions, maximised over the query's.

  Args:
    vectors: float32 or float16 (U, D) retrieved regions, scored in float32.
    regions: float32 (Mq, D) the query's regions; regions_valid: bool (Mq,).

  Returns:
    float32 (U,) best inner product with a valid query region.
  """
  pairs = vectors.astype(jnp.float32) @ regions.T
  return jnp.max(jnp.where(regions_valid[None], pairs, -jnp.inf), axis=1)


def _candidates(
  region_index,
  database,
  regions,
  regions_valid,
  labels,
  approximate,
  shortlist,
  *,
  rescore,
):
  """The best `shortlist` images of one query by the per-image max of its hits.

  Args:
    region_index: RegionIndex the labels come from.
    database: float32 or float16 (N, M, D) ndarray, the indexed descriptors.
    regions: float32 (Mq, D) the query's regions; regions_valid: bool (Mq,).
    labels: int64 (Mq, H) FAISS labels of their hits (-1: no hit).
    approximate: float32 (Mq, H) the index's scores of the hits.
    shortlist: S.
    rescore: score each retrieved region exactly (float32), against every
      query region (eq. 7's VecSim, maximised over the query's regions),
      instead of taking the index's score.

  Returns:
    int64 (S,) image rows, best first, -1 padded.
  """
  hit = labels >= 0
  if rescore:
    retrieved = np.unique(labels[hit])
    images = region_index.image_ids[retrieved]
    rows = images * database.shape[1] + region_index.region_ids[retrieved]
    vectors = np.take(
      database.reshape(-1, database.shape[-1]),
      np.pad(rows, (0, _bucket(rows.size) - rows.size)),
      axis=0,
    )
    scores = np.asarray(_hit_scores(vectors, regions, regions_valid))[
      : rows.size
    ]
  else:
    images, scores = region_index.image_ids[labels[hit]], approximate[hit]
  unique, inverse = np.unique(images, return_inverse=True)
  best = np.full(unique.shape, -np.inf, np.float32)
  np.maximum.at(best, inverse, scores)  # per-image max
  top = unique[np.argsort(-best, kind='stable')[:shortlist]]
  return np.pad(top, (0, shortlist - top.size), constant_values=-1)


@functools.partial(jax.jit, static_argnames=('qe', 'n_qe', 'include_query'))
def _rerank(
  query,
  query_valid,
  candidates,
  candidates_valid,
  alpha,
  *,
  qe,
  n_qe,
  include_query,
):
  """Exact eq. (7) (and eq. 8) of each query against its own candidates.

  Args:
    query: float32 (Q, Mq, D); query_valid: bool (Q, Mq).
    candidates: float32 or float16 (Q, S, Mt, D), scored in float32;
      candidates_valid: bool (Q, S, Mt).
    alpha: float32 () alpha-QE exponent of eq. (8)'s weights (0: eq. 8).

  Returns:
    float32 (Q, S) scores and int32 (Q, S) best-matched candidate region.
  """

  def rerank_one(regions, regions_valid, targets, targets_valid):
    scores, best = similarity.image_similarity(  # eq. (7)
      regions[None],
      regions_valid[None],
      targets,
      targets_valid,
      chunk_size=targets.shape[0],
    )
    if qe:
      scores = similarity.query_expansion(  # eq. (8)
        regions[None],
        targets,
        targets_valid,
        scores,
        best,
        n_qe=n_qe,
        include_query=include_query,
        query_valid=regions_valid[None],
        alpha=alpha,
        chunk_size=targets.shape[0],
      )
    return scores[0], best[0]

  return jax.vmap(rerank_one)(
    query, query_valid, candidates.astype(jnp.float32), candidates_valid
  )


def search(
  region_index,
  database,
  database_valid,
  query,
  query_valid,
  *,
  k_regions=100,
  shortlist=1000,
  qe=False,
  n_qe=10,
  include_query=False,
  alpha=0.0,
  nprobe=None,
  ef_search=None,
  rescore=True,
  query_batch=16,
):
  """Ranks the database for each query: region index, then exact eq. (7).

  Args:
    region_index: RegionIndex built on `database`.
    database: float32 or float16 (N, M, D) the indexed descriptors (e.g. a
      memory map); only the retrieved regions and the shortlisted images
      are read.
    database_valid: bool (N, M) valid database regions.
    query: float (Q, Mq, D) l2-normalised whitened query regions.
    query_valid: bool (Q, Mq) valid query regions.
    k_regions: regions retrieved per valid query region.
    shortlist: S, candidate images re-ranked exactly per query.
    qe: apply eq. (8) query expansion on the shortlist.
    n_qe: N_QE of eq. (8) (capped at S).
    include_query: eq. (8) variant of `similarity.query_expansion`.
    alpha: alpha-QE exponent of `similarity.query_expansion` (0: eq. 8).
    nprobe: ivfpq lists probed (None: the index option).
    ef_search: hnsw search depth (None: the index option).
    rescore: shortlist by the exact scores of the retrieved regions (read
      from `database`) instead of the index's approximate ones; the
      per-image max is then a lower bound of eq. (7), exact whenever the
      best region pair was retrieved.
    query_batch: queries re-ranked at once (largest temporary: float32
      (query_batch, S, M, D) gathered candidates).

  Returns:
    float32 (Q, S) scores best first (-inf pads), int64 (Q, S) database rows
    (-1 pads when fewer than S images were retrieved), int32 (Q, S)
    best-matched database region (eq. 7).

  Raises:
    ValueError: shapes that do not match each other or the index.
    TypeError: non-floating descriptors or non-boolean masks.
  """
  query, query_valid = np.asarray(query), np.asarray(query_valid)
  database_valid = np.asarray(database_valid)
  region_index_lib.check_regions('query', query, query_valid)
  region_index_lib.check_regions('database', database, database_valid)
  metadata = region_index.metadata
  if (database.shape[0], database.shape[1:]) != (
    metadata['num_images'],
    (metadata['num_regions'], metadata['D']),
  ):
    raise ValueError(
      f'database {database.shape} is not the indexed '
      f'({metadata["num_images"]}, {metadata["num_regions"]}, '
      f'{metadata["D"]})'
    )
  if query.shape[-1] != metadata['D']:
    raise ValueError(f'query D={query.shape[-1]} != index D={metadata["D"]}')
  if k_regions < 1 or shortlist < 1 or query_batch < 1:
    raise ValueError(
      'k_regions, shortlist and query_batch must be >= 1, got '
      f'{k_regions}, {shortlist}, {query_batch}'
    )
  database = np.asarray(database)  # a memory map stays one
  num_queries = query.shape[0]
  labels = np.full(query_valid.shape + (k_regions,), -1, np.int64)
  found = np.full(labels.shape, -np.inf, np.float32)
  if query_valid.any():
    found[query_valid], labels[query_valid] = region_index.index.search(
      np.ascontiguousarray(query[query_valid], dtype=np.float32),
      k_regions,
      params=search_parameters(region_index, nprobe, ef_search),
    )
  candidates = np.stack(
    [
      _candidates(
        region_index,
        database,
        np.asarray(query[q], np.float32),
        query_valid[q],
        labels[q],
        found[q],
        shortlist,
        rescore=rescore,
      )
      for q in range(num_queries)
    ]
  )
  outputs = [], [], []
  query_batch = min(query_batch, num_queries)
  for start in range(0, num_queries, query_batch):
    rows = np.arange(start, start + query_batch) % num_queries  # pad by wrap
    batch = candidates[rows]
    gathered = np.take(database, np.maximum(batch, 0), axis=0)  # cast on device
    gathered_valid = (
      database_valid[np.maximum(batch, 0)] & (batch >= 0)[..., None]
    )
    batch_scores, batch_best = _rerank(
      np.asarray(query[rows], np.float32),
      query_valid[rows],
      gathered,
      gathered_valid,
      np.float32(alpha),
      qe=qe,
      n_qe=min(n_qe, shortlist),
      include_query=include_query,
    )
    batch_scores, batch_best = np.asarray(batch_scores), np.asarray(batch_best)
    order = np.argsort(-batch_scores, axis=1, kind='stable')
    count = min(query_batch, num_queries - start)
    for output, values in zip(outputs, (batch_scores, batch, batch_best)):
      output.append(np.take_along_axis(values, order, axis=1)[:count])
  scores, ranks, best = (np.concatenate(output) for output in outputs)
  return scores, np.where(np.isfinite(scores), ranks, -1), best
