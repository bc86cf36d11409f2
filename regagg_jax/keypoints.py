"""Salient points: Hessian-affine detection and the N_max / N_min rule (Sec. 2).

Coordinates are (x, y) pixels with pixel centres at integers (OpenCV and
hesaff convention): pixel (row i, column j) is the point (j, i).

Detection has two backends behind `detect`:
  "hesaff"  Perdoch's Hessian-affine detector (PyPI `pyhesaff`), the faithful
            reference; runs on the host, imported lazily.
  "jax"     a Hessian-affine detector in JAX (`detect_hessian_affine`),
            jit-compiled with a fixed-size top-K output and a validity mask.

`select_salient` ranks the points by alpha resized to the image size and keeps
the N_max best; with fewer than N_min points it falls back to the pixels of the
N_min largest values of the resized alpha.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Measurement-region factor of hesaff: an ellipse shape is mr_size * sigma * U.
MEASUREMENT_REGION = 3.0 * np.sqrt(3.0)


def _check_image(image):
  """Raises unless image is uint8 (H_I, W_I, 3)."""
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H_I, W_I, 3) RGB, got {image.shape}")
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8, got {image.dtype}")


def _detect_hesaff(image, **params):
  """Perdoch's Hessian-affine detector on the host.

  Returns:
    points float32 (P, 2) and shapes float32 (P, 2, 2), the lower-triangular
    matrices [[a, 0], [c, d]] mapping the unit circle onto each measurement
    ellipse (hesaff keypoints are (x, y, a, c, d, orientation)).
  """
  try:
    import pyhesaff  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        'backend="hesaff" needs pyhesaff: pip install "regagg_jax[hesaff]" '
        'or use backend="jax"') from error
  gray = np.ascontiguousarray(
      np.round(np.asarray(image, np.float32) @ np.float32([0.299, 0.587,
                                                           0.114]))
      .astype(np.uint8))
  keypoints, _ = pyhesaff.detect_feats_in_image(gray, **params)
  keypoints = np.asarray(keypoints, np.float32).reshape(-1, 6)
  shapes = np.zeros((len(keypoints), 2, 2), np.float32)
  shapes[:, 0, 0] = keypoints[:, 2]
  shapes[:, 1, 0] = keypoints[:, 3]
  shapes[:, 1, 1] = keypoints[:, 4]
  return keypoints[:, :2], shapes


def detect_shapes(image, *, backend="hesaff", pad_multiple=1024,
                  **detector_options):
  """Hessian-affine keypoints with their affine shapes ([16], Sec. 2).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    backend: "hesaff" (pyhesaff, host) or "jax" (`detect_hessian_affine`).
    pad_multiple: the hesaff output is padded to a multiple of this so that
      the jitted consumers compile once per size bucket.
    **detector_options: passed to the backend (hesaff parameters, e.g.
      threshold=..., or keyword arguments of `detect_hessian_affine`).

  Returns:
    points: float32 (P, 2) keypoint centres (x, y) in pixels.
    shapes: float32 (P, 2, 2) matrices mapping the unit circle onto each
      measurement ellipse (MEASUREMENT_REGION * sigma * U).
    valid: bool (P,) which rows are detections (the rest is padding).
  """
  _check_image(image)
  if backend == "jax":
    return detect_hessian_affine(jnp.asarray(image), **detector_options)
  if backend != "hesaff":
    raise ValueError(f'backend must be "hesaff" or "jax", got {backend!r}')
  points, shapes = _detect_hesaff(np.asarray(image), **detector_options)
  count = len(points)
  size = max(pad_multiple, -(-count // pad_multiple) * pad_multiple)
  padding = size - count
  points = np.pad(points, ((0, padding), (0, 0)))
  shapes = np.pad(shapes, ((0, padding), (0, 0), (0, 0)))
  valid = np.arange(size) < count
  return jnp.asarray(points), jnp.asarray(shapes), jnp.asarray(valid)


def detect(image, *, backend="hesaff", **options):
  """Hessian-affine salient point positions in an image (Sec. 2, [16]).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    backend: "hesaff" or "jax", see `detect_shapes`.
    **options: see `detect_shapes`.

  Returns:
    points float32 (P, 2) as (x, y) pixels and valid bool (P,).
  """
  points, _, valid = detect_shapes(image, backend=backend, **options)
  return points, valid


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
  return ((columns == lower[:, None]) * (1.0 - fraction[:, None])
          + (columns == upper[:, None]) * fraction[:, None])


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
  top = (alpha[lower[:, 0], lower[:, 1]] * (1 - fraction[:, 1])
         + alpha[lower[:, 0], upper[:, 1]] * fraction[:, 1])
  bottom = (alpha[upper[:, 0], lower[:, 1]] * (1 - fraction[:, 1])
            + alpha[upper[:, 0], upper[:, 1]] * fraction[:, 1])
  return top * (1 - fraction[:, 0]) + bottom * fraction[:, 0]


def select_salient_padded(points, valid, alpha, grid_size, image_size, *,
                          padded_shape, n_max=4000, n_min=300):
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
  inside = valid & jnp.all((points >= -0.5)
                           & (points < image_size[::-1] - 0.5), axis=1)
  scores = jnp.where(inside, sample_alpha(alpha, points, grid_size,
                                          image_size), -jnp.inf)
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
    resized = jnp.einsum("ih,hw,jw->ij", rows, alpha, columns)
    inside_pixels = ((jnp.arange(height)[:, None] < image_size[0])
                     & (jnp.arange(width)[None, :] < image_size[1]))
    resized = jnp.where(inside_pixels, resized, -jnp.inf)
    _, flat = jax.lax.top_k(resized.reshape(-1), n_min)
    pixels = jnp.stack([flat % width, flat // width], axis=1)
    fallback_points = jnp.zeros((n_max, 2), jnp.float32)
    fallback_points = fallback_points.at[:n_min].set(pixels.astype(jnp.float32))
    return fallback_points, jnp.arange(n_max) < n_min

  enough = jnp.sum(inside) >= n_min
  return jax.lax.cond(enough, lambda: (top_points, top_valid), fall_back)


@functools.partial(jax.jit,
                   static_argnames=("image_shape", "n_max", "n_min"))
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
  if points.ndim != 2 or points.shape[1] != 2 or valid.shape != points.shape[:1]:
    raise ValueError(f"points must be (P, 2) and valid (P,), got "
                     f"{points.shape} and {valid.shape}")
  if valid.dtype != jnp.bool_:
    raise TypeError(f"valid must be bool, got {valid.dtype}")
  if alpha.ndim != 2:
    raise ValueError(f"alpha must be (H, W), got {alpha.shape}")
  if not 0 < n_min <= n_max:
    raise ValueError(f"need 0 < n_min <= n_max, got {n_min}, {n_max}")
  return select_salient_padded(
      points.astype(jnp.float32), valid, alpha.astype(jnp.float32),
      alpha.shape, image_shape, padded_shape=tuple(image_shape), n_max=n_max,
      n_min=n_min)


def _blur(image, sigma):
  """float32 (H, W) Gaussian blur, radius ceil(3 sigma), replicated border.

  Sums of shifted slices: XLA fuses them into one loop, several times faster
  on a CPU than lax.conv with a 1-D kernel.
  """
  radius = int(np.ceil(3.0 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  height, width = image.shape
  padded = jnp.pad(image, radius, mode="edge")
  rows = sum(float(tap) * padded[i:i + height] for i, tap in enumerate(taps))
  return sum(float(tap) * rows[:, i:i + width] for i, tap in enumerate(taps))


def _differentiate(images):
  """float32 (N, 5, H, W) dx, dy, dxx, dyy, dxy of (N, H, W), edge border.

  Central 3x3 finite differences, as in hesaff.
  """
  height, width = images.shape[1:]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
  at = lambda rows, columns: padded[:, 1 + rows:1 + rows + height,
                                    1 + columns:1 + columns + width]
  return jnp.stack([
      0.5 * (at(0, 1) - at(0, -1)),
      0.5 * (at(1, 0) - at(-1, 0)),
      at(0, -1) - 2 * images + at(0, 1),
      at(-1, 0) - 2 * images + at(1, 0),
      0.25 * (at(-1, -1) - at(-1, 1) - at(1, -1) + at(1, 1))], axis=1)


def _localise(responses, threshold, edge_ratio):
  """Quadratic fit in (x, y, scale) at every pixel of the middle responses.

  Args:
    responses: float32 (S + 2, H, W) DoH of consecutive levels.

  Returns, for the S middle levels, offsets (S, 3, H, W), interpolated
  responses (S, H, W) and whether each pixel passes the edge test,
  |offset| <= 1.5 and |response| >= threshold.
  """
  derivatives = _differentiate(responses)
  low, current, high = responses[:-2], responses[1:-1], responses[2:]
  dx, dy, dxx, dyy, dxy = jnp.moveaxis(derivatives[1:-1], 1, 0)
  dss = low - 2 * current + high
  dxs = 0.5 * (derivatives[2:, 0] - derivatives[:-2, 0])
  dys = 0.5 * (derivatives[2:, 1] - derivatives[:-2, 1])
  ds = 0.5 * (high - low)
  # Cramer's rule for [[dxx dxy dxs] [dxy dyy dys] [dxs dys dss]] b = -g.
  cofactors = (dyy * dss - dys * dys, dxs * dys - dxy * dss,
               dxy * dys - dxs * dyy, dxx * dss - dxs * dxs,
               dxy * dxs - dxx * dys, dxx * dyy - dxy * dxy)
  c11, c12, c13, c22, c23, c33 = cofactors
  determinant = dxx * c11 + dxy * c12 + dxs * c13
  offset = -jnp.stack([c11 * dx + c12 * dy + c13 * ds,
                       c12 * dx + c22 * dy + c23 * ds,
                       c13 * dx + c23 * dy + c33 * ds], axis=1)
  offset /= determinant[:, None]
  value = current + 0.5 * (dx * offset[:, 0] + dy * offset[:, 1]
                           + ds * offset[:, 2])
  edge_score = (dxx + dyy) ** 2 / (dxx * dyy - dxy * dxy)
  keep = ((edge_score >= 0) & (edge_score < (edge_ratio + 1) ** 2 / edge_ratio)
          & jnp.all(jnp.abs(offset) <= 1.5, axis=1)
          & (jnp.abs(value) >= threshold))
  return offset, value, keep


def _octave_candidates(first_level, *, octave, scales_per_octave,
                       initial_sigma, threshold, edge_ratio, border,
                       max_points):
  """Localised DoH extrema of one octave, the best `max_points` by |DoH|.

  Returns (score, x, y, sigma, detection level index) arrays of the octave's
  candidates in octave pixels, the images (S, H_o, W_o) the affine adaptation
  samples (the level below each detection level, as hesaff), and the next
  octave's first level.
  """
  step = 2.0 ** (1.0 / scales_per_octave)
  sigmas = [initial_sigma * step ** i for i in range(scales_per_octave + 2)]
  levels = [first_level]
  for i in range(1, scales_per_octave + 2):
    levels.append(_blur(levels[-1], sigmas[i - 1] * np.sqrt(step ** 2 - 1)))
  derivatives = _differentiate(jnp.stack(levels))
  norms = jnp.asarray(sigmas, jnp.float32)[:, None, None] ** 4
  responses = norms * (derivatives[:, 2] * derivatives[:, 3]
                       - derivatives[:, 4] ** 2)  # scale-normalised det H
  window = (3, 3, 3)
  maxima = jax.lax.reduce_window(responses, -jnp.inf, jax.lax.max, window,
                                 (1, 1, 1), "SAME")[1:-1]
  minima = jax.lax.reduce_window(responses, jnp.inf, jax.lax.min, window,
                                 (1, 1, 1), "SAME")[1:-1]
  height, width = first_level.shape
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  columns = jnp.arange(width, dtype=jnp.float32)[None, :]
  inside = ((rows >= border) & (rows < height - border)
            & (columns >= border) & (columns < width - border))
  current = responses[1:-1]
  extremum = (((current >= maxima) & (current > 0.8 * threshold))
              | ((current <= minima) & (current < -0.8 * threshold)))
  offset, value, keep = _localise(responses, threshold, edge_ratio)
  candidate = extremum & keep & inside[None]
  middle = jnp.asarray(sigmas[1:-1], jnp.float32)[:, None, None]
  scores = jnp.where(candidate, jnp.abs(value), -jnp.inf).reshape(-1)
  xs = (columns + offset[:, 0]).reshape(-1)
  ys = (rows + offset[:, 1]).reshape(-1)
  scales = (middle * step ** offset[:, 2]).reshape(-1)
  indices = jnp.broadcast_to(
      octave * scales_per_octave
      + jnp.arange(scales_per_octave)[:, None, None], current.shape).reshape(-1)
  best, order = jax.lax.top_k(scores, min(max_points, scores.shape[0]))
  candidates = (best, xs[order], ys[order], scales[order], indices[order])
  next_level = levels[scales_per_octave][::2, ::2]
  return candidates, jnp.stack(levels[:scales_per_octave]), next_level


def _bilinear(buffer, offset, width, height, xs, ys):
  """Bilinear reads of the image stored row-major at buffer[offset:]."""
  xs = jnp.clip(xs, 0.0, width - 1.0)
  ys = jnp.clip(ys, 0.0, height - 1.0)
  x0, y0 = jnp.floor(xs), jnp.floor(ys)
  x1, y1 = jnp.minimum(x0 + 1, width - 1), jnp.minimum(y0 + 1, height - 1)
  fx, fy = xs - x0, ys - y0
  read = lambda x, y: buffer[offset + (y * width + x).astype(jnp.int32)]
  return ((read(x0, y0) * (1 - fx) + read(x1, y0) * fx) * (1 - fy)
          + (read(x0, y1) * (1 - fx) + read(x1, y1) * fx) * fy)


def _adapt_shape(buffer, offset, width, height, x, y, ratio, *, window,
                 iterations, max_anisotropy, convergence):
  """Affine shape adaptation (second-moment matrix) of one keypoint.

  Iterates U <- mu^(-1/2) U (det U = 1), mu being the Gaussian-weighted
  second-moment matrix of the window x window patch sampled around (x, y)
  with spacing ratio * U. Returns U (2, 2) and whether it converged with
  bounded anisotropy.
  """
  half = window // 2
  grid = jnp.arange(-half, half + 1, dtype=jnp.float32)
  u, v = jnp.meshgrid(grid, grid)
  weight = jnp.exp(-0.5 * (u ** 2 + v ** 2) / (half / 3.0) ** 2)

  def step(_, state):
    shape, ok, _ = state
    xs = x + ratio * (shape[0, 0] * u + shape[0, 1] * v)
    ys = y + ratio * (shape[1, 0] * u + shape[1, 1] * v)
    patch = _bilinear(buffer, offset, width, height, xs, ys)
    gx = jnp.gradient(patch, axis=1)
    gy = jnp.gradient(patch, axis=0)
    moments = jnp.array([[jnp.sum(weight * gx * gx), jnp.sum(weight * gx * gy)],
                         [jnp.sum(weight * gx * gy), jnp.sum(weight * gy * gy)]])
    eigenvalues, vectors = jnp.linalg.eigh(moments + 1e-12 * jnp.eye(2))
    inverse_root = (vectors / jnp.sqrt(jnp.maximum(eigenvalues, 1e-20))) @ vectors.T
    new_shape = inverse_root @ shape
    new_shape /= jnp.sqrt(jnp.abs(jnp.linalg.det(new_shape)))
    singular = jnp.linalg.svd(new_shape, compute_uv=False)
    ok &= singular[0] / singular[1] <= max_anisotropy
    change = 1.0 - jnp.sqrt(eigenvalues[0] / jnp.maximum(eigenvalues[1], 1e-20))
    return jnp.where(ok, new_shape, shape), ok, change

  state = (jnp.eye(2), jnp.array(True), jnp.array(1.0))
  shape, ok, change = jax.lax.fori_loop(0, iterations, step, state)
  return shape, ok & (change < convergence)


@functools.partial(jax.jit, static_argnames=(
    "max_points", "scales_per_octave", "initial_sigma", "threshold",
    "edge_ratio", "border", "window", "iterations", "max_anisotropy",
    "convergence"))
def detect_hessian_affine(image, *, max_points=8192, scales_per_octave=3,
                          initial_sigma=1.6, threshold=16.0 / 3.0,
                          edge_ratio=10.0, border=5, window=19, iterations=16,
                          max_anisotropy=6.0, convergence=0.05):
  """Hessian-affine keypoints [16] in JAX, fixed-size output (backend "jax").

  Follows Perdoch's detector: a Gaussian scale space (scales_per_octave
  levels per octave from initial_sigma, octaves halve the image), the
  scale-normalised determinant of the Hessian, 3x3x3 extrema above
  (0.8 threshold)^2 ... threshold^2 (maxima are blobs, minima saddles), a
  quadratic fit in position and scale (scale selection), an edge test, then
  `iterations` rounds of affine shape adaptation. The max_points strongest
  |DoH| survive; points whose measurement region leaves the image are dropped.

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    max_points: P, the fixed number of output rows (hesaff finds about
      3000-9000 points on a 1024 x 768 photo, all ranked by alpha later).
    scales_per_octave, initial_sigma: scale-space sampling.
    threshold: DoH threshold on a 0..255 image (squared internally).
    edge_ratio: maximal principal-curvature ratio of a response peak.
    border: pixels ignored at each octave's border.
    window: side of the patch (samples) for the second-moment matrix.
    iterations: affine adaptation rounds (fixed).
    max_anisotropy: largest axis ratio of a valid affine shape.
    convergence: largest final 1 - sqrt(lambda_min / lambda_max) of the
      second-moment matrix for a valid shape.

  Returns:
    points float32 (P, 2) (x, y), shapes float32 (P, 2, 2) (unit circle ->
    measurement ellipse, MEASUREMENT_REGION * sigma * U) and valid bool (P,).
  """
  _check_image(image)
  gray = jnp.round(image.astype(jnp.float32) @ jnp.asarray([0.299, 0.587,
                                                            0.114]))
  level = _blur(gray, float(np.sqrt(initial_sigma ** 2 - 0.25)))
  found, buffers, tables = [], [], []
  start, octave = 0, 0
  while min(level.shape) > 2 * border + 2:
    candidates, images, level_next = _octave_candidates(
        level, octave=octave, scales_per_octave=scales_per_octave,
        initial_sigma=initial_sigma, threshold=threshold ** 2,
        edge_ratio=edge_ratio, border=border, max_points=max_points)
    found.append(candidates)
    buffers.append(images.reshape(-1))
    size = level.shape[0] * level.shape[1]
    for i in range(scales_per_octave):
      tables.append((start + i * size, level.shape[1], level.shape[0],
                     2.0 ** octave))
    start += scales_per_octave * size
    level, octave = level_next, octave + 1
  score, x, y, sigma, index = (jnp.concatenate(parts) for parts in zip(*found))
  score, order = jax.lax.top_k(score, max_points)
  x, y, sigma, index = x[order], y[order], sigma[order], index[order]
  offset, width, height, distance = (jnp.asarray(column)[index]
                                     for column in zip(*tables))
  adapt = functools.partial(
      _adapt_shape, window=window, iterations=iterations,
      max_anisotropy=max_anisotropy, convergence=convergence)
  shapes, converged = jax.vmap(adapt, in_axes=(None, 0, 0, 0, 0, 0, 0))(
      jnp.concatenate(buffers), offset, width.astype(jnp.float32),
      height.astype(jnp.float32), x, y, sigma / initial_sigma)
  points = jnp.stack([x, y], axis=1) * distance[:, None]
  shapes = (MEASUREMENT_REGION * sigma * distance)[:, None, None] * shapes
  valid = ((score > -jnp.inf) & converged
           & measured_inside(points, shapes, image.shape[:2]))
  return points, shapes, valid


def measured_inside(points, shapes, image_size):
  """Whether each measurement region (the ellipse's square) is in the image.

  Args:
    points: float32 (P, 2) (x, y) pixels.
    shapes: float32 (P, 2, 2) unit circle -> measurement ellipse.
    image_size: int (2,) (H_I, W_I), maybe traced.

  Returns:
    bool (P,).
  """
  corners = jnp.einsum("pij,cj->pci", shapes,
                       jnp.asarray([[1, 1], [1, -1], [-1, 1], [-1, -1]],
                                   jnp.float32)) + points[:, None, :]
  limit = jnp.asarray(image_size, jnp.float32)[::-1] - 1.0
  return jnp.all((corners >= 0) & (corners <= limit), axis=(1, 2))
