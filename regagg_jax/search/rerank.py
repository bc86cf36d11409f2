"""Re-ranking after the first search (eq. 7): the options and diffusion.

  Rerank            what one search.rerank value does
  RERANK            search.rerank -> Rerank: 'none', 'qe' (eq. 8), 'alpha_qe'
                    (Radenovic et al. TPAMI 2018), 'diffusion' (Iscen et al.
                    CVPR 2017)
  rerank_diffusion  regional diffusion of the top T images of a first search

Query expansions are `similarity.query_expansion` (eq. 8; alpha-QE is its
alpha > 0 with the query included). Diffusion re-ranks each query's top T
images of the first search by `diffusion.diffuse` on the graph of their
regions (graph.RegionGraph); the rest of the database follows in the order
of the first search, with score -inf.

Public: Rerank, RERANK, rerank_diffusion.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from regagg_jax.search import diffusion


class Rerank(NamedTuple):
  """What a search.rerank value does after eq. (7).

  Attributes:
    expansion: a second search with an expanded query (eq. 8).
    alpha_weighted: alpha-QE: the top results weighted by s^alpha and the
      query's own region included (else eq. 8's plain sum).
    diffusion: regional diffusion on the database's region graph.
  """

  expansion: bool
  alpha_weighted: bool
  diffusion: bool


RERANK = {
  'none': Rerank(expansion=False, alpha_weighted=False, diffusion=False),
  'qe': Rerank(expansion=True, alpha_weighted=False, diffusion=False),
  'alpha_qe': Rerank(expansion=True, alpha_weighted=True, diffusion=False),
  'diffusion': Rerank(expansion=False, alpha_weighted=False, diffusion=True),
}
"""search.rerank -> Rerank."""


def rerank_diffusion(
  query,
  query_valid,
  database,
  database_valid,
  scores,
  neighbours,
  weights,
  *,
  truncate=1000,
  options=diffusion.DiffusionOptions(),
):
  """Re-ranks the top `truncate` images of each query by diffusion.

  Args:
    query: float32 (Q, Mq, D) l2-normalised whitened query regions.
    query_valid: bool (Q, Mq).
    database: float32 or float16 (N, M, D) the database regions (e.g. a
      memory map; only the candidates are read).
    database_valid: bool (N, M).
    scores: float32 (Q, N) first-search scores (eq. 7; -inf: not found).
    neighbours: int32 (N * M, k) RegionGraph.neighbours of the database.
    weights: float32 (N * M, k) RegionGraph.weights.
    truncate: T candidate images per query (Iscen et al.'s truncation;
      0: all N, their setting up to 6k images).
    options: diffusion.DiffusionOptions.

  Returns:
    float32 (Q, N) diffusion scores (-inf outside the candidates) and int64
    (Q, N) database rows, best first: the candidates by diffusion (ties in
    first-search order), then the others in first-search order.

  Raises:
    ValueError: a graph of other shapes than the database.
  """
  num_images, num_regions, _ = database.shape
  if neighbours.shape[0] != num_images * num_regions:
    raise ValueError(
      f'the graph has {neighbours.shape[0]} region slots, the database '
      f'{num_images} x {num_regions}'
    )
  size = min(truncate or num_images, num_images)
  first = np.argsort(-scores, axis=1, kind='stable')
  new_scores = np.full(scores.shape, -np.inf, np.float32)
  ranks = np.empty(scores.shape, np.int64)
  offsets = np.arange(num_regions)
  for q in range(scores.shape[0]):
    top = first[q, :size]
    candidates = np.where(np.isfinite(scores[q, top]), top, -1)
    rows = np.maximum(candidates, 0)
    slots = (rows[:, None] * num_regions + offsets).reshape(-1)
    diffused = np.asarray(
      diffusion.diffuse(
        jnp.asarray(query[q], jnp.float32),
        jnp.asarray(query_valid[q]),
        candidates.astype(np.int32),
        np.asarray(database[rows], np.float32),
        database_valid[rows] & (candidates >= 0)[:, None],
        neighbours[slots],
        weights[slots],
        options=options,
      )
    )
    order = np.argsort(-diffused, kind='stable')
    ranks[q, :size], ranks[q, size:] = top[order], first[q, size:]
    new_scores[q, top] = diffused
  return new_scores, ranks
