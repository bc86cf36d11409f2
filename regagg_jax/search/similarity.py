"""Region-to-region image similarity (eq. 7) and regional query expansion
(eq. 8, and its alpha-QE weighting).

Descriptors are l2-normalised, so VecSim is the dot product. The database is
scored in fixed-size chunks under `jax.lax.map` (padded to a whole number of
chunks), so the (Q, chunk, Mq, Mt) similarity block is the largest temporary
and a (Q, N, Mq, Mt) tensor never exists. Invalid regions never match: pairs
with an invalid query or database region score -inf, so a database image
without a valid region (or a query without one) scores -inf everywhere,
which sorts last in any ranking.
"""

import functools

import jax
import jax.numpy as jnp

from regagg_jax.aggregation import pca


def _check_descriptors(name, descriptors, valid):
  if descriptors.ndim != 3:
    raise ValueError(
      f'{name} must be (images, regions, D), got shape {descriptors.shape}'
    )
  if not jnp.issubdtype(descriptors.dtype, jnp.floating):
    raise TypeError(f'{name} must be floating, got {descriptors.dtype}')
  if valid.shape != descriptors.shape[:2]:
    raise ValueError(
      f'{name}_valid must be {descriptors.shape[:2]}, got {valid.shape}'
    )
  if valid.dtype != jnp.bool_:
    raise TypeError(f'{name}_valid must be bool, got {valid.dtype}')


@functools.partial(jax.jit, static_argnames=('chunk_size',))
def image_similarity(
  query, query_valid, database, database_valid, *, chunk_size=256
):
  """ImSim of eq. (7): max VecSim over valid region pairs, per image pair.

  Args:
    query: float32 (Q, Mq, D) l2-normalised query region descriptors.
    query_valid: bool (Q, Mq) valid query regions.
    database: float32 (N, Mt, D) l2-normalised database region descriptors.
    database_valid: bool (N, Mt) valid database regions.
    chunk_size: database images scored at once; the largest temporary is
      float32 (Q, chunk_size, Mq, Mt).

  Returns:
    float32 (Q, N) scores (-inf where no valid region pair exists) and
    int32 (Q, N) index m' of the best-matched database region (0 when the
    score is -inf).

  Raises:
    ValueError: wrong ranks, mismatched shapes or D.
    TypeError: non-floating descriptors or non-boolean masks.
  """
  _check_descriptors('query', query, query_valid)
  _check_descriptors('database', database, database_valid)
  if query.shape[-1] != database.shape[-1]:
    raise ValueError(
      f'query D={query.shape[-1]} != database D={database.shape[-1]}'
    )
  num_images, num_regions, dim = database.shape
  chunk = max(1, min(chunk_size, num_images))
  num_chunks = -(-num_images // chunk)
  padding = num_chunks * chunk - num_images
  database = jnp.pad(database, ((0, padding), (0, 0), (0, 0)))
  database_valid = jnp.pad(database_valid, ((0, padding), (0, 0)))
  database = database.reshape(num_chunks, chunk, num_regions, dim)
  database_valid = database_valid.reshape(num_chunks, chunk, num_regions)

  def score_chunk(block):
    targets, targets_valid = block
    similarity = jnp.einsum('qad,nbd->qnab', query, targets)  # VecSim
    pair_valid = query_valid[:, None, :, None] & targets_valid[None, :, None, :]
    similarity = jnp.where(pair_valid, similarity, -jnp.inf)
    per_target_region = jnp.max(similarity, axis=2)  # (Q, chunk, Mt)
    return (
      jnp.max(per_target_region, axis=-1),  # eq. (7)
      jnp.argmax(per_target_region, axis=-1).astype(jnp.int32),
    )

  scores, best = jax.lax.map(score_chunk, (database, database_valid))
  scores = jnp.moveaxis(scores, 0, 1).reshape(query.shape[0], -1)
  best = jnp.moveaxis(best, 0, 1).reshape(query.shape[0], -1)
  return scores[:, :num_images], best[:, :num_images]


@functools.partial(
  jax.jit, static_argnames=('n_qe', 'include_query', 'chunk_size')
)
def query_expansion(
  query,
  database,
  database_valid,
  scores,
  best,
  *,
  n_qe=10,
  include_query=False,
  query_valid=None,
  alpha=0.0,
  chunk_size=256,
):
  """Regional query expansion of eq. (8), optionally alpha-weighted.

  f~_QE = l2(sum of the best-matched region descriptors of the top `n_qe`
  database images of `scores`, each weighted by max(s, 0)^alpha), then
  ImSim(q, t) = max over the valid regions m' of t of <f~_QE, f~_t,m'>. Top
  results scoring -inf (no valid pair) are left out of the average. The
  paper averages the database regions only (default, alpha = 0);
  `include_query=True` adds, as in average query expansion (CroW [5],
  [19]), the query region that matched the top-1 result best, with weight 1
  (its own similarity, 1, to the alpha). alpha > 0 with the query included
  is alpha-QE (Radenovic, Tolias, Chum, TPAMI 2018: weights s^alpha,
  alpha = 3); on global descriptors (M = 1) it is exactly their
  q' = l2(q + sum_i s_i^alpha d_i).

  Args:
    query: float32 (Q, Mq, D) l2-normalised query region descriptors.
    database: float32 (N, Mt, D) l2-normalised database region descriptors.
    database_valid: bool (N, Mt) valid database regions.
    scores: float32 (Q, N) first-search scores (eq. 7).
    best: int32 (Q, N) best-matched database region index (eq. 7).
    n_qe: number N_QE of top results averaged, at most N.
    include_query: also average the query's own best-matching region.
    query_valid: bool (Q, Mq) valid query regions (only used with
      `include_query`), or None for all.
    alpha: exponent of the top results' weights max(s, 0)^alpha (0: the
      plain sum of eq. 8; 3: alpha-QE).
    chunk_size: database chunk of the second search (`image_similarity`).

  Returns:
    float32 (Q, N) re-scored similarities (-inf for database images without
    a valid region, or for queries without any finite first-search score).

  Raises:
    ValueError: `n_qe` out of range or mismatched shapes.
    TypeError: non-floating descriptors or non-boolean masks.
  """
  if query_valid is None:
    query_valid = jnp.ones(query.shape[:2], dtype=bool)
  _check_descriptors('query', query, query_valid)
  _check_descriptors('database', database, database_valid)
  expected = (query.shape[0], database.shape[0])
  if scores.shape != expected or best.shape != expected:
    raise ValueError(
      f'scores and best must be (Q, N) = {expected}, got '
      f'{scores.shape} and {best.shape}'
    )
  if not 1 <= n_qe <= database.shape[0]:
    raise ValueError(f'n_qe must be in [1, N={database.shape[0]}], got {n_qe}')
  top_scores, top_images = jax.lax.top_k(scores, n_qe)  # (Q, n_qe)
  top_regions = jnp.take_along_axis(best, top_images, axis=1)
  matched = database[top_images, top_regions]  # (Q, n_qe, D)
  weights = jnp.where(  # alpha-QE weights; 0^0 = 1 keeps eq. (8)
    jnp.isfinite(top_scores), jnp.maximum(top_scores, 0.0) ** alpha, 0.0
  ).astype(matched.dtype)
  expanded = jnp.einsum('qn,qnd->qd', weights, matched)
  if include_query:
    to_top1 = jnp.einsum('qad,qd->qa', query, matched[:, 0])
    own = jnp.argmax(jnp.where(query_valid, to_top1, -jnp.inf), axis=1)
    own_region = jnp.take_along_axis(query, own[:, None, None], axis=1)[:, 0]
    found = jnp.isfinite(top_scores[:, :1]).astype(matched.dtype)
    expanded = expanded + found * own_region
  expanded = pca.l2_normalize(expanded)
  has_expansion = jnp.any(jnp.isfinite(top_scores), axis=1, keepdims=True)
  new_scores, _ = image_similarity(
    expanded[:, None, :],
    has_expansion,
    database,
    database_valid,
    chunk_size=chunk_size,
  )  # eq. (8)
  return new_scores
