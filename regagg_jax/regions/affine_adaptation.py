"""Affine shape adaptation of Hessian-affine candidates (hesaff's rule).

U <- mu^(-1/2) U (det U = 1), mu the second-moment matrix of the patch
sampled through U, until the eigenvalue ratio of mu has converged in two
consecutive rounds (success), U is too anisotropic, singular, or
`iterations` rounds pass (failure), as Perdoch's hesaff. `adapt_shapes`
runs it on a fixed number of slots refilled from a priority queue, so its
cost follows the rounds each point really needs, and it stops once the
`needed` first valid points of the queue are known. The candidates and the
scale-space pyramid come from hessian_affine.find_candidates.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

MEASUREMENT_REGION = 3.0 * np.sqrt(3.0)
"""hesaff's measurement-region factor: an ellipse is this * sigma * U."""

_PENDING, _VALID, _INVALID = 0, 1, 2  # a queued point's adaptation status


def _read_pairs(pixels, start):
  """float32 (..., 2) pixels[start], pixels[start + 1]: one gather of pairs.

  A read past a row's end (x0 = width - 1, weight 0) gets the next row's
  first pixel, a finite value.
  """
  dimensions = jax.lax.GatherDimensionNumbers(
    offset_dims=(start.ndim,), collapsed_slice_dims=(), start_index_map=(0,)
  )
  return jax.lax.gather(
    pixels,
    start[..., None],
    dimensions,
    (2,),
    mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
  )


def _adaptation_round(pyramid, candidates, point, shape, *, window):
  """One adaptation round of the points in the slots (C,) (index >= 0).

  Returns the updated shapes (C, 2, 2) (det 1), the eigenvalue ratio change
  1 - sqrt(lambda_min / lambda_max) of the second-moment matrix mu of the
  window x window patch sampled through the old shape, and whether mu was
  singular.
  """
  index = jnp.maximum(point, 0)
  level = candidates.levels[index]
  width, height = pyramid.widths[level], pyramid.heights[level]
  distance = pyramid.distances[level]
  x = candidates.points[index, 0] / distance
  y = candidates.points[index, 1] / distance
  step = candidates.ratios[index][:, None, None]
  half = window // 2
  grid = jnp.arange(-half, half + 1, dtype=jnp.float32)
  u, v = grid[None, :], grid[:, None]
  axes = step * shape  # (C, 2, 2)
  xs = (
    x[:, None, None]
    + axes[:, 0, 0, None, None] * u
    + axes[:, 0, 1, None, None] * v
  )
  ys = (
    y[:, None, None]
    + axes[:, 1, 0, None, None] * u
    + axes[:, 1, 1, None, None] * v
  )
  xs = jnp.clip(xs, 0.0, width[:, None, None] - 1.0)
  ys = jnp.clip(ys, 0.0, height[:, None, None] - 1.0)
  x0, y0 = jnp.floor(xs), jnp.floor(ys)
  fx, fy = xs - x0, ys - y0
  start = pyramid.offsets[level][:, None, None] + (
    y0 * width[:, None, None] + x0
  ).astype(jnp.int32)
  top = _read_pairs(pyramid.pixels, start)  # (x0, y0), (x0 + 1, y0)
  bottom = _read_pairs(
    pyramid.pixels, start + width.astype(jnp.int32)[:, None, None]
  )
  patch = (top[..., 0] * (1 - fx) + top[..., 1] * fx) * (1 - fy) + (
    bottom[..., 0] * (1 - fx) + bottom[..., 1] * fx
  ) * fy
  gx, gy = jnp.gradient(patch, axis=2), jnp.gradient(patch, axis=1)
  weight = jnp.exp(-0.5 * (u**2 + v**2) / (half / 3.0) ** 2)
  a, b, c = (
    jnp.sum(weight * g, axis=(1, 2)) for g in (gx * gx, gx * gy, gy * gy)
  )
  # mu = [[a, b], [b, c]]; mu^(-1/2) is proportional to adj(mu + sqrt(det) I).
  spread = jnp.sqrt(0.25 * (a - c) ** 2 + b * b)
  largest, smallest = 0.5 * (a + c) + spread, 0.5 * (a + c) - spread
  singular = ~(smallest > 0)
  root = jnp.sqrt(jnp.maximum(a * c - b * b, 0.0))
  inverse_root = jnp.stack(
    [jnp.stack([c + root, -b], -1), jnp.stack([-b, a + root], -1)], -2
  )
  new_shape = inverse_root @ shape
  determinant = (
    new_shape[:, 0, 0] * new_shape[:, 1, 1]
    - new_shape[:, 0, 1] * new_shape[:, 1, 0]
  )
  new_shape /= jnp.sqrt(jnp.abs(determinant))[:, None, None]
  change = 1.0 - jnp.sqrt(jnp.maximum(smallest, 0.0) / largest)
  return new_shape, change, singular


@functools.partial(
  jax.jit,
  static_argnames=(
    'needed',
    'capacity',
    'window',
    'iterations',
    'max_anisotropy',
    'convergence',
  ),
)
def adapt_shapes(
  pyramid,
  candidates,
  priority,
  image_size,
  *,
  needed,
  capacity=64,
  window=19,
  iterations=16,
  max_anisotropy=6.0,
  convergence=0.05,
):
  """Affine shape adaptation [16] of candidates taken in priority order.

  Hesaff's rule per point: U <- mu^(-1/2) U (det U = 1), mu the
  Gaussian-weighted second-moment matrix of the window x window patch
  sampled around the point with spacing ratio * U; success when
  1 - sqrt(lambda_min / lambda_max) of mu is below `convergence` in two
  consecutive rounds, failure when the axis ratio of U exceeds
  max_anisotropy, mu is singular or `iterations` rounds pass. A point is
  valid when it succeeds and its measurement region lies in the image.

  `capacity` slots each adapt one point; a slot whose point ends takes the
  next one of the queue (decreasing priority, ties to the lower index). The
  loop stops when the queue is done or when the first `needed` valid points
  of the queue are known (all points before them ended).

  Args:
    pyramid, candidates: from `find_candidates`.
    priority: float32 (P,) queue order; -inf rows are never adapted.
    image_size: int (2,) (H_I, W_I) the measurement regions must lie in
      (maybe traced, for a padded image).
    needed: stop after this many valid points in queue order.
    capacity: points adapted at once.
    window, iterations, max_anisotropy, convergence: see
      `detect_hessian_affine`.

  Returns:
    shapes float32 (P, 2, 2) (MEASUREMENT_REGION * sigma * U; the circle
    where not adapted) and valid bool (P,) (False where not adapted).
  """
  count = priority.shape[0]
  capacity = min(capacity, count)
  order = jnp.argsort(-priority, stable=True)
  queued = jnp.sum(priority > -jnp.inf)
  position = jnp.arange(count)
  scale = MEASUREMENT_REGION * candidates.sigmas

  def keep_going(state):
    entry, _, _, _, _, status, _ = state  # status in queue order
    pending = (status == _PENDING) & (position < queued)
    first = jnp.where(jnp.any(pending), jnp.argmax(pending), queued)
    found = jnp.sum((status == _VALID) & (position < first))
    return jnp.any(entry >= 0) & (found < needed)

  def step(state):
    entry, shape, previous, rounds, next_entry, status, shapes = state
    point = jnp.where(entry >= 0, order[jnp.maximum(entry, 0)], -1)
    new_shape, change, singular = _adaptation_round(
      pyramid, candidates, point, shape, window=window
    )
    spread = jnp.sum(new_shape**2, axis=(1, 2))  # = s1^2 + s2^2, s1 s2 = 1
    axis_ratio = 0.5 * (spread + jnp.sqrt(jnp.maximum(spread**2 - 4.0, 0.0)))
    failed = singular | ~(axis_ratio <= max_anisotropy)
    success = ~failed & (change < convergence) & (previous < convergence)
    ended = (entry >= 0) & (success | failed | (rounds + 1 >= iterations))
    index = jnp.maximum(point, 0)
    measured = scale[index][:, None, None] * new_shape
    good = success & measured_inside(
      candidates.points[index], measured, image_size
    )
    status = status.at[jnp.where(ended, entry, count)].set(  # count: dropped
      jnp.where(good, _VALID, _INVALID), mode='drop'
    )
    shapes = shapes.at[jnp.where(ended, point, count)].set(
      measured, mode='drop'
    )
    free = ended | (entry < 0)
    refill = next_entry + jnp.cumsum(free) - 1
    entry = jnp.where(free, jnp.where(refill < queued, refill, -1), entry)
    shape = jnp.where(free[:, None, None], jnp.eye(2), new_shape)
    previous = jnp.where(free, 0.0, change)
    rounds = jnp.where(free, 0, rounds + 1)
    next_entry = jnp.minimum(next_entry + jnp.sum(free), queued)
    return entry, shape, previous, rounds, next_entry, status, shapes

  slots = jnp.arange(capacity)
  state = (
    jnp.where(slots < queued, slots, -1),
    jnp.broadcast_to(jnp.eye(2), (capacity, 2, 2)),
    jnp.zeros(capacity),
    jnp.zeros(capacity, jnp.int32),
    jnp.minimum(capacity, queued),
    jnp.zeros(count, jnp.int32),
    scale[:, None, None] * jnp.eye(2),
  )
  *_, status, shapes = jax.lax.while_loop(keep_going, step, state)
  status = jnp.zeros(count, jnp.int32).at[order].set(status)
  return shapes, status == _VALID


def measured_inside(points, shapes, image_size):
  """Whether each measurement region (the ellipse's square) is in the image.

  Args:
    points: float32 (P, 2) (x, y) pixels.
    shapes: float32 (P, 2, 2) unit circle -> measurement ellipse.
    image_size: int (2,) (H_I, W_I), maybe traced.

  Returns:
    bool (P,).
  """
  corners = (
    jnp.einsum(
      'pij,cj->pci',
      shapes,
      jnp.asarray([[1, 1], [1, -1], [-1, 1], [-1, -1]], jnp.float32),
    )
    + points[:, None, :]
  )
  limit = jnp.asarray(image_size, jnp.float32)[::-1] - 1.0
  return jnp.all((corners >= 0) & (corners <= limit), axis=(1, 2))
