"""Global fast k-means on masked, fixed-size 2-D point sets (paper Sec. 2).

The salient points P of an image are grouped into L clusters C_1..C_L with the
fast global k-means algorithm of Likas, Vlassis and Verbeek (2003), ref. [17]:

  k = 1:       the centre is the mean of the points.
  k = 2..L:    the new centre is the data point x_n maximising the bound
                 b_n = sum_j max(d_{k-1}^j - ||x_n - x_j||^2, 0),
               d_{k-1}^j being the squared distance of x_j to its closest of the
               k-1 current centres; then Lloyd's k-means runs from the k-1 old
               centres plus x_n until no label changes (or `max_iterations`).

Everything is deterministic: ties in the bound go to the lowest point index,
ties in the assignment to the lowest centre index, and an empty cluster keeps
its centre. `num_candidates` > 1 tries the T best-bounded points (T = P is the
full global k-means of [17]); the fast variant is a heuristic, and on
overlapping blobs it can end a few per cent above the best of many random
Lloyd restarts. The O(P^2) bound is computed over blocks of `chunk_size` rows
(lax.map) so memory stays O(chunk_size * P). The function is pure and
jit-compiled; vmap it over a batch of padded point sets.
"""

import functools

import jax
import jax.numpy as jnp


def _check_points(points, valid):
  """Raises if points is not float (P, 2) or valid is not bool (P,)."""
  if points.ndim != 2 or points.shape[-1] != 2:
    raise ValueError(f'points must be (P, 2), got shape {points.shape}')
  if not jnp.issubdtype(points.dtype, jnp.floating):
    raise TypeError(f'points must be floating point, got {points.dtype}')
  if valid.shape != points.shape[:1]:
    raise ValueError(
      f'valid must be ({points.shape[0]},), got shape {valid.shape}'
    )
  if valid.dtype != jnp.bool_:
    raise TypeError(f'valid must be bool, got {valid.dtype}')


def _squared_distances(points, centres):
  """float32 (P, k) squared distances between (P, 2) points and (k, 2) centres.

  Coordinate by coordinate: (P, k) operands vectorise on a CPU where a
  trailing axis of 2 does not.
  """
  return (points[:, 0, None] - centres[None, :, 0]) ** 2 + (
    points[:, 1, None] - centres[None, :, 1]
  ) ** 2


def compute_bounds(points, valid, nearest, *, chunk_size=512):
  """Likas et al.'s bound b_n for every candidate point (fast global k-means).

  Args:
    points: float32 (P, 2) point coordinates.
    valid: bool (P,) which points are real (padding is ignored).
    nearest: float32 (P,) squared distance d_{k-1}^j of each point to its
      closest current centre.
    chunk_size: rows of the (P, P) distance matrix computed at once.

  Returns:
    float32 (P,) b_n = sum_j valid_j max(d_{k-1}^j - ||x_n - x_j||^2, 0);
    -inf where `valid` is False so that they are never chosen.
  """
  num_points = points.shape[0]
  chunk = min(chunk_size, num_points)
  num_chunks = -(-num_points // chunk)
  padded = jnp.pad(points, ((0, num_chunks * chunk - num_points), (0, 0)))
  gain = jnp.where(valid, nearest, 0.0)

  def block_bounds(rows):
    distances = _squared_distances(rows, points)  # (chunk, P)
    return jnp.sum(jnp.maximum(gain[None, :] - distances, 0.0), axis=1)

  bounds = jax.lax.map(block_bounds, padded.reshape(num_chunks, chunk, 2))
  bounds = bounds.reshape(-1)[:num_points]
  return jnp.where(valid, bounds, -jnp.inf)


def _assign(points, valid, centres):
  """int32 (P,) index of the closest centre, -1 where not valid."""
  labels = jnp.argmin(_squared_distances(points, centres), axis=1)
  return jnp.where(valid, labels, -1).astype(jnp.int32)


def _update_centres(points, labels, centres):
  """Means of the assigned points; an empty cluster keeps its old centre."""
  one_hot = labels[:, None] == jnp.arange(centres.shape[0])[None, :]
  one_hot = one_hot.astype(points.dtype)  # (P, k)
  counts = jnp.sum(one_hot, axis=0)
  sums = jnp.einsum('pk,pc->kc', one_hot, points)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where(counts[:, None] > 0, means, centres)


def run_lloyd(points, valid, centres, *, max_iterations=100):
  """Lloyd's k-means from `centres` until the labels stop changing.

  Args:
    points: float32 (P, 2) point coordinates.
    valid: bool (P,) which points are real.
    centres: float32 (k, 2) initial centres.
    max_iterations: upper bound on the assignment / update rounds.

  Returns:
    labels int32 (P,) (-1 where not valid) and centres float32 (k, 2).
  """
  labels = _assign(points, valid, centres)

  def keep_going(state):
    _, _, changed, iteration = state
    return changed & (iteration < max_iterations)

  def step(state):
    labels, centres, _, iteration = state
    centres = _update_centres(points, labels, centres)
    new_labels = _assign(points, valid, centres)
    return new_labels, centres, jnp.any(new_labels != labels), iteration + 1

  state = (labels, centres, jnp.array(True), jnp.array(0))
  labels, centres, _, _ = jax.lax.while_loop(keep_going, step, state)
  return labels, centres


@functools.partial(
  jax.jit,
  static_argnames=(
    'num_clusters',
    'num_candidates',
    'max_iterations',
    'chunk_size',
  ),
)
def global_fast_kmeans(
  points,
  valid,
  *,
  num_clusters=3,
  num_candidates=1,
  max_iterations=100,
  chunk_size=512,
):
  """Fast global k-means [17] of a masked point set into L clusters (Sec. 2).

  Args:
    points: float32 (P, 2) salient points as (x, y) pixels (padded).
    valid: bool (P,) which points are real; padding never influences the
      result.
    num_clusters: L, the number of clusters (3 in the paper).
    num_candidates: new-centre candidates tried for each k, the points with
      the largest bounds b_n; the run with the smallest sum of squared errors
      wins. 1 is the fast global k-means of [17] used by the paper; P (all
      points) is the full global k-means of [17], P times the cost.
    max_iterations: upper bound on Lloyd rounds for each k.
    chunk_size: rows of the O(P^2) bound computed at once (memory bound).

  Returns:
    labels: int32 (P,) cluster index in [0, L), -1 where `valid` is False.
    centres: float32 (L, 2) cluster centres. With fewer distinct valid points
      than L some clusters are empty (no label points at them). With no valid
      point at all, every label is -1 and the centres are 0.
  """
  _check_points(points, valid)
  if num_clusters < 1:
    raise ValueError(f'num_clusters must be >= 1, got {num_clusters}')
  points = points.astype(jnp.float32)
  weights = valid.astype(jnp.float32)
  mean = jnp.einsum('p,pc->c', weights, points) / jnp.maximum(
    jnp.sum(weights), 1.0
  )
  centres = mean[None, :]
  labels = _assign(points, valid, centres)
  num_candidates = min(num_candidates, points.shape[0])
  for _ in range(1, num_clusters):
    nearest = jnp.min(_squared_distances(points, centres), axis=1)
    bounds = compute_bounds(points, valid, nearest, chunk_size=chunk_size)
    _, order = jax.lax.top_k(bounds, num_candidates)  # ties: lowest index
    candidates = jnp.where(jnp.any(valid), points[order], mean[None, :])

    def run_from(candidate, centres=centres):
      start = jnp.concatenate([centres, candidate[None, :]], axis=0)
      labels, finish = run_lloyd(
        points, valid, start, max_iterations=max_iterations
      )
      error = jnp.sum(
        jnp.where(
          valid,
          jnp.sum((points - finish[jnp.maximum(labels, 0)]) ** 2, axis=1),
          0.0,
        )
      )
      return labels, finish, error

    all_labels, all_centres, errors = jax.vmap(run_from)(candidates)
    errors = jnp.where(valid[order], errors, jnp.inf)
    best = jnp.argmin(errors)  # ties: best-ranked candidate
    labels, centres = all_labels[best], all_centres[best]
  return labels, centres
