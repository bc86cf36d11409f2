"""Hessian-affine keypoints in JAX (the "jax" backend of keypoints.detect).

The Hessian-affine detector of Mikolajczyk and Schmid, "Scale & affine
invariant interest point detectors", IJCV 60(1), 2004 (the paper's ref. [16]),
as implemented by Perdoch's hesaff (PyPI `pyhesaff`, the "hesaff" backend):

  scale space   scales_per_octave Gaussian levels per octave from
                initial_sigma; each octave halves the image.
  response      the scale-normalised determinant of the Hessian (DoH),
                sigma^4 (Lxx Lyy - Lxy^2), from 3x3 central differences.
  extrema       3x3x3 maxima (blobs) and minima (saddles) in (x, y, scale).
  localisation  a quadratic fit in position and scale (scale selection), an
                edge test on the principal-curvature ratio, a DoH threshold.
  adaptation    fixed rounds of U <- mu^(-1/2) U, mu the second-moment matrix
                of the patch sampled through U (det U = 1).

`detect_hessian_affine` is jit-compiled with a fixed-size top-K output and a
validity mask. Coordinates are (x, y) pixels with pixel centres at integers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Measurement-region factor of hesaff: an ellipse shape is mr_size * sigma * U.
MEASUREMENT_REGION = 3.0 * np.sqrt(3.0)
# RGB -> gray weights of both backends (OpenCV's), rounded to 0..255 after.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def check_image(image):
  """Raises unless image is uint8 (H_I, W_I, 3) (numpy, jax or a tracer)."""
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H_I, W_I, 3) RGB, got {image.shape}")
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8, got {image.dtype}")


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
  check_image(image)
  gray = jnp.round(image.astype(jnp.float32) @ jnp.asarray(GRAY_WEIGHTS))
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
