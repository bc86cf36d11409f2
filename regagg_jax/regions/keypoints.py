"""Salient points: Hessian-affine detection and the N_max / N_min rule (Sec. 2).

Coordinates are (x, y) pixels with pixel centres at integers (OpenCV and
hesaff convention): pixel (row i, column j) is the point (j, i).

Detection has two backends, chosen by `proposal.detect_shapes`:
  "hesaff"  `detect_hesaff`, Perdoch's Hessian-affine detector (PyPI
            `pyhesaff`), the faithful reference; runs on the host.
  "jax"     `hessian_affine.detect_hessian_affine`, the same detector in JAX,
            jit-compiled with a fixed-size top-K output and a validity mask.

`select_salient` ranks the points by alpha resized to the image size and keeps
the N_max best; with fewer than N_min points it falls back to the pixels of the
N_min largest values of the resized alpha. `detect_salient` fuses the jax
detector with that rule: the affine adaptation (the detector's costly stage)
runs in alpha order and stops once the N_max best valid points are known.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.regions import affine_adaptation
from regagg_jax.regions import hessian_affine


def detect_hesaff(image, *, pad_multiple=1024, **hesaff_params):
  """Perdoch's Hessian-affine keypoints ([16], Sec. 2), on the host, padded.

  The "hesaff" backend of `proposal.detect_shapes`; pyhesaff is imported
  here, lazily.

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    pad_multiple: the output is padded to a multiple of this so that the
      jitted consumers compile once per size bucket.
    **hesaff_params: pyhesaff parameters, e.g. threshold=...

  Returns:
    points: float32 (P, 2) keypoint centres (x, y) in pixels.
    shapes: float32 (P, 2, 2) lower-triangular matrices [[a, 0], [c, d]]
      mapping the unit circle onto each measurement ellipse (hesaff keypoints
      are (x, y, a, c, d, orientation)).
    valid: bool (P,) which rows are detections (the rest is padding).
  """
  hessian_affine.check_image(image)
  try:
    import pyhesaff  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      'backend="hesaff" needs pyhesaff: pip install "regagg_jax[hesaff]" '
      'or use backend="jax"'
    ) from error
  gray = np.ascontiguousarray(
    np.round(
      np.asarray(image, np.float32) @ np.float32(hessian_affine.GRAY_WEIGHTS)
    ).astype(np.uint8)
  )
  detected, _ = pyhesaff.detect_feats_in_image(gray, **hesaff_params)
  detected = np.asarray(detected, np.float32).reshape(-1, 6)
  count = len(detected)
  size = max(pad_multiple, -(-count // pad_multiple) * pad_multiple)
  points = np.zeros((size, 2), np.float32)
  points[:count] = detected[:, :2]
  shapes = np.zeros((size, 2, 2), np.float32)
  shapes[:count, 0, 0] = detected[:, 2]
  shapes[:count, 1, 0] = detected[:, 3]
  shapes[:count, 1, 1] = detected[:, 4]
  valid = np.arange(size) < count
  return jnp.asarray(points), jnp.asarray(shapes), jnp.asarray(valid)


def _interpolation_matrix(size_out, size_in, scale_in, limit_in):
  """float32 (size_out, size_in) bilinear weights, cv2.resize(INTER_LINEAR).

  Output pixel o samples the input at (o + 0.5) * scale_in - 0.5, clamped to
  [0, limit_in - 1]; scale_in and limit_in may be traced (padded batches).
  """
  source = (jnp.arange(size_out, dtype=jnp.float32) + 0.5) * scale_in - 0.5
  source = jnp.clip(source, 0.0, limit_in - 1.0)
  lower = jnp.floor(source)
  upper = jnp.minimum(lower + 1.0, limit_in - 1.0)
  fraction = source - lower
  columns = jnp.arange(size_in, dtype=jnp.float32)[None, :]
  return (columns == lower[:, None]) * (1.0 - fraction[:, None]) + (
    columns == upper[:, None]
  ) * fraction[:, None]


def sample_alpha(alpha, points, grid_size, image_size):
  """alpha resized to the image size (bilinear) and read at points.

  At integer points this equals cv2.resize(alpha, (W_I, H_I)) read there;
  between pixels it interpolates bilinearly.

  Args:
    alpha: float32 (H, W) spatial weights (eq. 1), maybe padded.
    points: float32 (P, 2) (x, y) pixels.
    grid_size: int (2,) (rows, columns) of alpha that belong to the image.
    image_size: int (2,) (H_I, W_I) of the image.

  Returns:
    float32 (P,) alpha at the points.
  """
  grid_size = jnp.asarray(grid_size, jnp.float32)
  scale = grid_size / jnp.asarray(image_size, jnp.float32)
  source = (points[:, ::-1] + 0.5) * scale - 0.5  # (P, 2) as (row, column)
  source = jnp.clip(source, 0.0, grid_size - 1.0)
  lower = jnp.floor(source).astype(jnp.int32)
  upper = jnp.minimum(lower + 1, grid_size.astype(jnp.int32) - 1)
  fraction = source - lower
  top = (
    alpha[lower[:, 0], lower[:, 1]] * (1 - fraction[:, 1])
    + alpha[lower[:, 0], upper[:, 1]] * fraction[:, 1]
  )
  bottom = (
    alpha[upper[:, 0], lower[:, 1]] * (1 - fraction[:, 1])
    + alpha[upper[:, 0], upper[:, 1]] * fraction[:, 1]
  )
  return top * (1 - fraction[:, 0]) + bottom * fraction[:, 0]


def select_salient_padded(
  points,
  valid,
  alpha,
  grid_size,
  image_size,
  *,
  padded_shape,
  n_max=4000,
  n_min=300,
):
  """`select_salient` with traced sizes, for images padded into a batch.

  Args:
    points, valid, alpha: as in `select_salient` (alpha maybe padded).
    grid_size: int (2,) rows and columns of alpha that belong to the image.
    image_size: int (2,) (H_I, W_I) of the image.
    padded_shape: static (height, width) >= image_size of the padded image.
    n_max, n_min: as in `select_salient`.

  Returns:
    points float32 (n_max, 2) and valid bool (n_max,).
  """
  image_size = jnp.asarray(image_size, jnp.int32)
  inside = valid & jnp.all(
    (points >= -0.5) & (points < image_size[::-1] - 0.5), axis=1
  )
  scores = jnp.where(
    inside, sample_alpha(alpha, points, grid_size, image_size), -jnp.inf
  )
  if points.shape[0] < n_max:
    padding = n_max - points.shape[0]
    scores = jnp.pad(scores, (0, padding), constant_values=-jnp.inf)
    points = jnp.pad(points, ((0, padding), (0, 0)))
  best_scores, order = jax.lax.top_k(scores, n_max)  # ties: lowest index
  top_points = points[order].astype(jnp.float32)
  top_valid = best_scores > -jnp.inf

  def fall_back():
    # Positions of the n_min largest values of alpha resized to W_I x H_I.
    height, width = padded_shape
    grid = jnp.asarray(grid_size, jnp.float32)
    scale = grid / image_size.astype(jnp.float32)
    rows = _interpolation_matrix(height, alpha.shape[0], scale[0], grid[0])
    columns = _interpolation_matrix(width, alpha.shape[1], scale[1], grid[1])
    resized = jnp.einsum('ih,hw,jw->ij', rows, alpha, columns)
    inside_pixels = (jnp.arange(height)[:, None] < image_size[0]) & (
      jnp.arange(width)[None, :] < image_size[1]
    )
    resized = jnp.where(inside_pixels, resized, -jnp.inf)
    _, flat = jax.lax.top_k(resized.reshape(-1), n_min)
    pixels = jnp.stack([flat % width, flat // width], axis=1)
    fallback_points = jnp.zeros((n_max, 2), jnp.float32)
    fallback_points = fallback_points.at[:n_min].set(pixels.astype(jnp.float32))
    return fallback_points, jnp.arange(n_max) < n_min

  enough = jnp.sum(inside) >= n_min
  return jax.lax.cond(enough, lambda: (top_points, top_valid), fall_back)


def detect_salient(
  image,
  alpha,
  grid_size,
  image_size,
  *,
  padded_shape,
  n_max=4000,
  n_min=300,
  max_points=8192,
  capacity=64,
):
  """The salient point set P of Sec. 2 from the jax detector, fused.

  Equals `select_salient_padded` of the "jax" backend's detections (points
  whose measurement region leaves the image_size area are invalid), but the
  candidates are adapted in decreasing alpha (`affine_adaptation.adapt_shapes`)
  only until the n_max best valid ones are known.

  Args:
    image: uint8 (H_I, W_I, 3) RGB image, maybe padded.
    alpha: float32 (H, W) spatial weights of eq. 1, maybe padded.
    grid_size: int (2,) rows and columns of alpha that belong to the image.
    image_size: int (2,) (H_I, W_I) of the image before padding.
    padded_shape: static (height, width) of `image`.
    n_max, n_min: N_max and N_min of `select_salient`.
    max_points: candidates kept by |DoH| (`hessian_affine.find_candidates`).
    capacity: points adapted at once (speed only).

  Returns:
    points float32 (n_max, 2) and valid bool (n_max,), best first.
  """
  candidates, pyramid = hessian_affine.find_candidates(
    image, max_points=max_points
  )
  image_size = jnp.asarray(image_size, jnp.int32)
  points = candidates.points
  inside = (candidates.scores > -jnp.inf) & jnp.all(
    (points >= -0.5) & (points < image_size[::-1] - 0.5), axis=1
  )
  priority = jnp.where(
    inside, sample_alpha(alpha, points, grid_size, image_size), -jnp.inf
  )
  _, valid = affine_adaptation.adapt_shapes(
    pyramid, candidates, priority, image_size, needed=n_max, capacity=capacity
  )
  return select_salient_padded(
    points,
    valid,
    alpha,
    grid_size,
    image_size,
    padded_shape=padded_shape,
    n_max=n_max,
    n_min=n_min,
  )


@functools.partial(jax.jit, static_argnames=('image_shape', 'n_max', 'n_min'))
def select_salient(points, valid, alpha, image_shape, *, n_max=4000, n_min=300):
  """The salient point set P of Sec. 2 (N_max / N_min rule).

  Detected points are ranked by alpha resized to the image size (bilinear,
  as cv2.resize) at their positions and the n_max largest are kept (ties go to
  the lower input index). If fewer than n_min points are valid, P is instead
  the pixel positions of the n_min largest values of the resized alpha.

  Args:
    points: float32 (P, 2) detected (x, y) pixels.
    valid: bool (P,) which points are detections.
    alpha: float32 (H, W) spatial weights of eq. 1.
    image_shape: static (H_I, W_I) of the image the points come from.
    n_max: N_max, the size of the output (4000 in the paper).
    n_min: N_min (300 in the paper); must be <= n_max.

  Returns:
    points float32 (n_max, 2) and valid bool (n_max,), best first.
  """
  if (
    points.ndim != 2 or points.shape[1] != 2 or valid.shape != points.shape[:1]
  ):
    raise ValueError(
      f'points must be (P, 2) and valid (P,), got '
      f'{points.shape} and {valid.shape}'
    )
  if valid.dtype != jnp.bool_:
    raise TypeError(f'valid must be bool, got {valid.dtype}')
  if alpha.ndim != 2:
    raise ValueError(f'alpha must be (H, W), got {alpha.shape}')
  if not 0 < n_min <= n_max:
    raise ValueError(f'need 0 < n_min <= n_max, got {n_min}, {n_max}')
  return select_salient_padded(
    points.astype(jnp.float32),
    valid,
    alpha.astype(jnp.float32),
    alpha.shape,
    image_shape,
    padded_shape=tuple(image_shape),
    n_max=n_max,
    n_min=n_min,
  )
