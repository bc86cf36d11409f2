"""Online stage of regional diffusion: y, conjugate gradient, pooling.

Iscen, Tolias, Avrithis, Furon, Chum, "Efficient diffusion on region
manifolds", CVPR 2017. For one query, on the graph of the regions of T
candidate images (the top T of the first search: their "truncated"
diffusion, Sec. 4.2; T = N is the whole graph):

  1. y (their eq. 4 input): the kq nearest candidate regions of every valid
     query region, their similarities summed per region; the kq largest
     sums s are kept, y = max(s, 0)^gamma, 0 elsewhere.
  2. S = D^-1/2 W D^-1/2 of the graph restricted to the candidates
     (renormalised on the subgraph, as their truncated Laplacian).
  3. f solves (I - alpha S) f = y (their eq. 6) by conjugate gradient:
     I - alpha S is symmetric positive definite for alpha < 1.
  4. Region scores pooled per image: 'gmp' (their generalised max pooling:
     weights (V V^T + lambda I)^-1 1 over the image's valid regions V,
     lambda = 1), 'sum' or 'max'.

Defaults (DiffusionOptions) follow Iscen et al.'s regional setting (their
run_test.m): alpha = 0.99, gamma = 3, kq = 200, 20 CG iterations,
tolerance 1e-6, gmp pooling; the graph's k = 200 is graph.DEFAULT_NEIGHBOURS.

Public: DiffusionOptions, POOLING, diffuse, conjugate_gradient.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class DiffusionOptions(NamedTuple):
  """Static options of `diffuse` (sources: Iscen et al., CVPR 2017).

  Attributes:
    alpha: alpha of (I - alpha S) f = y (0.99: their Sec. 5).
    gamma: exponent of y = s^gamma (3, as the graph's affinity).
    query_neighbours: kq nearest regions per query region (200: run_test.m,
      regional; capped at the candidate regions).
    iterations: CG iteration budget (20: run_test.m).
    tolerance: CG stops when |r| <= tolerance |y| (1e-6: run_test.m).
    pooling: a POOLING key ('gmp': their regional pooling).
    gmp_lambda: lambda of generalised max pooling (1: their gmpweights.m).
  """

  alpha: float = 0.99
  gamma: float = 3.0
  query_neighbours: int = 200
  iterations: int = 20
  tolerance: float = 1e-6
  pooling: str = 'gmp'
  gmp_lambda: float = 1.0


def _pool_sum(scores, vectors, valid, options):
  del vectors, options
  return jnp.sum(jnp.where(valid, scores, 0.0), axis=-1)


def _pool_max(scores, vectors, valid, options):
  del vectors, options
  return jnp.max(jnp.where(valid, scores, -jnp.inf), axis=-1)


def _pool_gmp(scores, vectors, valid, options):
  """sum_m b_m f_m, b = (V V^T + lambda I)^-1 1 over the valid regions."""
  vectors = jnp.where(valid[..., None], vectors, 0.0)
  gram = jnp.einsum('tmd,tnd->tmn', vectors, vectors)
  eye = jnp.eye(vectors.shape[1], dtype=vectors.dtype)
  weights = jnp.linalg.solve(
    gram + options.gmp_lambda * eye, jnp.ones(vectors.shape[:2] + (1,))
  )[..., 0]  # invalid rows are decoupled (zero rows and columns of V V^T)
  return jnp.sum(jnp.where(valid, weights * scores, 0.0), axis=-1)


POOLING = {'gmp': _pool_gmp, 'sum': _pool_sum, 'max': _pool_max}
"""DiffusionOptions.pooling -> (scores (T, M), vectors (T, M, D), valid
(T, M), options) -> float32 (T,) image scores."""


def conjugate_gradient(matvec, y, *, iterations, tolerance):
  """Solves A f = y for a symmetric positive definite A by CG.

  A fixed budget under `jax.lax.while_loop`: at most `iterations` steps,
  fewer once |r| <= tolerance |y| (from f = 0, as MATLAB's pcg).

  Args:
    matvec: f -> A f, float32 (R,) -> (R,).
    y: float32 (R,) right-hand side.
    iterations: the iteration budget.
    tolerance: relative residual to stop at.

  Returns:
    float32 (R,) f.
  """
  threshold = (tolerance * jnp.linalg.norm(y)) ** 2

  def running(state):
    step, _, _, _, residual_norm = state
    return (step < iterations) & (residual_norm > threshold)

  def iterate(state):
    step, solution, residual, direction, residual_norm = state
    product = matvec(direction)
    size = residual_norm / jnp.maximum(direction @ product, 1e-30)
    solution = solution + size * direction
    residual = residual - size * product
    new_norm = residual @ residual
    direction = residual + (new_norm / residual_norm) * direction
    return step + 1, solution, residual, direction, new_norm

  state = (0, jnp.zeros_like(y), y, y, y @ y)
  return jax.lax.while_loop(running, iterate, state)[1]


def _local_neighbours(neighbours, candidates, num_regions):
  """Global slots n * M + m -> positions t * M + m among the candidates'
  regions (-1 outside them), by a search in the sorted candidates."""
  order = jnp.argsort(candidates)
  ranked = candidates[order]
  images = neighbours // num_regions
  position = jnp.clip(jnp.searchsorted(ranked, images), 0, ranked.size - 1)
  inside = (neighbours >= 0) & (ranked[position] == images)
  local = order[position] * num_regions + neighbours % num_regions
  return jnp.where(inside, local, -1)


@functools.partial(jax.jit, static_argnames=('options',))
def diffuse(
  query,
  query_valid,
  candidates,
  vectors,
  vectors_valid,
  neighbours,
  weights,
  *,
  options=DiffusionOptions(),
):
  """Diffusion scores of T candidate images for one query (module doc).

  Args:
    query: float32 (Mq, D) l2-normalised whitened query regions (eq. 6).
    query_valid: bool (Mq,) valid query regions.
    candidates: int32 (T,) database rows of the candidates, distinct; -1
      pads (their regions take no part).
    vectors: float32 (T, M, D) their region descriptors.
    vectors_valid: bool (T, M) valid regions (False for -1 candidates).
    neighbours: int32 (T * M, k) the graph's neighbour slots (RegionGraph
      rows candidates[t] * M + m), -1 padded.
    weights: float32 (T * M, k) their affinities.
    options: DiffusionOptions (static).

  Returns:
    float32 (T,) pooled diffusion scores (-inf for -1 candidates and, with
    'max', images without a valid region).

  Raises:
    ValueError: an unknown pooling or mismatched shapes.
  """
  if options.pooling not in POOLING:
    raise ValueError(
      f'pooling must be one of {sorted(POOLING)}, got {options.pooling!r}'
    )
  num_images, num_regions, dim = vectors.shape
  nodes = num_images * num_regions
  if neighbours.shape != weights.shape or neighbours.shape[0] != nodes:
    raise ValueError(
      f'neighbours and weights must be (T * M = {nodes}, k), got '
      f'{neighbours.shape} and {weights.shape}'
    )
  vectors_valid = vectors_valid & (candidates >= 0)[:, None]
  node_valid = vectors_valid.reshape(-1)
  flat = vectors.reshape(nodes, dim)
  # 1. y: the kq nearest candidate regions of each valid query region.
  similarity = jnp.where(
    query_valid[:, None] & node_valid[None], query @ flat.T, -jnp.inf
  )  # VecSim of eq. (7), (Mq, T * M)
  kq = min(options.query_neighbours, nodes)
  top, found = jax.lax.top_k(similarity, kq)
  summed = jax.ops.segment_sum(
    jnp.where(jnp.isfinite(top), top, 0.0).reshape(-1),
    found.reshape(-1),
    num_segments=nodes,
  )
  reached = jax.ops.segment_sum(
    jnp.isfinite(top).reshape(-1).astype(jnp.float32),
    found.reshape(-1),
    num_segments=nodes,
  )
  summed = jnp.where((reached > 0) & node_valid, summed, -jnp.inf)
  kept, kept_nodes = jax.lax.top_k(summed, kq)
  y = (
    jnp.zeros(nodes)
    .at[kept_nodes]
    .set(
      jnp.where(
        jnp.isfinite(kept), jnp.maximum(kept, 0.0) ** options.gamma, 0.0
      )
    )
  )
  # 2. S = D^-1/2 W D^-1/2 on the candidates' subgraph.
  local = _local_neighbours(neighbours, candidates, num_regions)
  inside = (local >= 0) & node_valid[:, None]
  local = jnp.maximum(local, 0)
  inside &= node_valid[local]
  affinity = jnp.where(inside, weights, 0.0)
  degree = jnp.sum(affinity, axis=1)
  scale = jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1e-30)), 0.0)
  transition = scale[:, None] * affinity * scale[local]

  # 3. (I - alpha S) f = y by CG, S applied as a padded neighbour table.
  def matvec(f):
    return f - options.alpha * jnp.sum(transition * f[local], axis=1)

  f = conjugate_gradient(
    matvec, y, iterations=options.iterations, tolerance=options.tolerance
  )
  # 4. Region scores pooled per image.
  pooled = POOLING[options.pooling](
    f.reshape(num_images, num_regions), vectors, vectors_valid, options
  )
  return jnp.where(candidates >= 0, pooled, -jnp.inf)
