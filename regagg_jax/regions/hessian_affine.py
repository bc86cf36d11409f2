"""Hessian-affine keypoints in JAX (the "jax" backend of proposal.detect).

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
  adaptation    U <- mu^(-1/2) U (det U = 1), mu the second-moment matrix of
                the patch sampled through U, until the eigenvalue ratio of mu
                has converged in two consecutive rounds (success), U is too
                anisotropic or `iterations` rounds pass (failure), as hesaff.

Two stages: `find_candidates` (scale space, extrema, localisation; a fixed
top-P by |DoH|) and affine_adaptation.adapt_shapes, which runs the
adaptation on a fixed number of slots refilled from a priority queue, so
that its cost follows the rounds each point really needs and it can stop
once the `needed` first valid points of the queue are known
(keypoints.detect_salient queues by alpha).
`detect_hessian_affine` chains both over every candidate. Coordinates are
(x, y) pixels with pixel centres at integers.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.regions import affine_adaptation

# RGB -> gray weights of both backends (OpenCV's), rounded to 0..255 after.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class Candidates(NamedTuple):
  """Localised DoH extrema, best |DoH| first (padding has score -inf).

  points float32 (P, 2) (x, y) image pixels; sigmas float32 (P,) detection
  scale in image pixels; ratios float32 (P,) sampling step of the adaptation
  patch in octave pixels (sigma / initial_sigma); levels int32 (P,) pyramid
  image the adaptation samples; scores float32 (P,) |DoH|.
  """

  points: jax.Array
  sigmas: jax.Array
  ratios: jax.Array
  levels: jax.Array
  scores: jax.Array


class Pyramid(NamedTuple):
  """The images the adaptation samples.

  pixels float32 (N,): every level row-major, levels concatenated, then a
  row of zeros (reads of a pixel's right and lower neighbours stay inside);
  offsets int32 (S,) where each level starts, widths and heights float32
  (S,) and distances float32 (S,) (image pixels per level pixel).
  """

  pixels: jax.Array
  offsets: jax.Array
  widths: jax.Array
  heights: jax.Array
  distances: jax.Array


def check_image(image):
  """Raises unless image is uint8 (H_I, W_I, 3) (numpy, jax or a tracer)."""
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image must be (H_I, W_I, 3) RGB, got {image.shape}')
  if image.dtype != np.uint8:
    raise TypeError(f'image must be uint8, got {image.dtype}')


def _blur(image, sigma):
  """float32 (H, W) Gaussian blur, radius ceil(3 sigma), replicated border.

  Sums of shifted slices: XLA fuses each pass into one loop, several times
  faster on a CPU than lax.conv with a 1-D kernel. The barriers materialise
  each pass once (XLA would otherwise recompute a pass inside every consumer).
  """
  radius = int(np.ceil(3.0 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  height, width = image.shape
  padded = jnp.pad(image, radius, mode='edge')
  rows = jax.lax.optimization_barrier(
    sum(float(tap) * padded[i : i + height] for i, tap in enumerate(taps))
  )
  return jax.lax.optimization_barrier(
    sum(float(tap) * rows[:, i : i + width] for i, tap in enumerate(taps))
  )


def _extreme3(array, pick):
  """pick (max or min) over each 3x3x3 neighbourhood of the middle levels.

  Separable; the barriers keep XLA from fusing (and so recomputing 3 times)
  each pass into the next: several times faster on a CPU.
  """
  scales = pick(pick(array[:-2], array[1:-1]), array[2:])
  padded = jax.lax.optimization_barrier(
    jnp.pad(scales, ((0, 0), (1, 1), (1, 1)), mode='edge')
  )
  rows = jax.lax.optimization_barrier(
    pick(pick(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
  )
  return pick(pick(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _localise(neighbours, threshold, edge_ratio):
  """Quadratic fit in (x, y, scale) of candidates from their 3x3x3 DoH.

  Args:
    neighbours: float32 (C, 3, 3, 3) DoH around each candidate (scale, row,
      column).

  Returns offsets (C, 3) as (x, y, scale), interpolated responses (C,) and
  whether each passes the edge test, |offset| <= 1.5 and |DoH| >= threshold.
  """
  at = lambda s, y, x: neighbours[:, 1 + s, 1 + y, 1 + x]
  current = at(0, 0, 0)
  dx, dy, ds = [
    0.5 * (at(*step) - at(*(-i for i in step)))
    for step in ((0, 0, 1), (0, 1, 0), (1, 0, 0))
  ]
  dxx, dyy, dss = [
    at(*step) - 2 * current + at(*(-i for i in step))
    for step in ((0, 0, 1), (0, 1, 0), (1, 0, 0))
  ]
  dxy = 0.25 * (at(0, -1, -1) - at(0, -1, 1) - at(0, 1, -1) + at(0, 1, 1))
  dxs = 0.25 * (at(-1, 0, -1) - at(-1, 0, 1) - at(1, 0, -1) + at(1, 0, 1))
  dys = 0.25 * (at(-1, -1, 0) - at(-1, 1, 0) - at(1, -1, 0) + at(1, 1, 0))
  # Cramer's rule for [[dxx dxy dxs] [dxy dyy dys] [dxs dys dss]] b = -g.
  c11, c12, c13 = (
    dyy * dss - dys * dys,
    dxs * dys - dxy * dss,
    dxy * dys - dxs * dyy,
  )
  c22, c23, c33 = (
    dxx * dss - dxs * dxs,
    dxy * dxs - dxx * dys,
    dxx * dyy - dxy * dxy,
  )
  determinant = dxx * c11 + dxy * c12 + dxs * c13
  offset = -jnp.stack(
    [
      c11 * dx + c12 * dy + c13 * ds,
      c12 * dx + c22 * dy + c23 * ds,
      c13 * dx + c23 * dy + c33 * ds,
    ],
    axis=1,
  )
  offset /= determinant[:, None]
  value = current + 0.5 * (
    dx * offset[:, 0] + dy * offset[:, 1] + ds * offset[:, 2]
  )
  edge_score = (dxx + dyy) ** 2 / (dxx * dyy - dxy * dxy)
  keep = (
    (edge_score >= 0)
    & (edge_score < (edge_ratio + 1) ** 2 / edge_ratio)
    & jnp.all(jnp.abs(offset) <= 1.5, axis=1)
    & (jnp.abs(value) >= threshold)
  )
  return offset, value, keep


def _octave_candidates(
  first_level,
  *,
  octave,
  scales_per_octave,
  initial_sigma,
  threshold,
  edge_ratio,
  border,
  max_points,
):
  """Localised DoH extrema of one octave, the best `max_points` by |DoH|.

  Only the 2 max_points strongest raw extrema are localised. Returns the
  candidates' (score, x, y, sigma, ratio, level) in image pixels, the images
  (S, H_o, W_o) the adaptation samples (the level below each detection level,
  as hesaff) and the next octave's first level.
  """
  step = 2.0 ** (1.0 / scales_per_octave)
  sigmas = [initial_sigma * step**i for i in range(scales_per_octave + 2)]
  levels = [first_level]
  for i in range(1, scales_per_octave + 2):
    levels.append(_blur(levels[-1], sigmas[i - 1] * np.sqrt(step**2 - 1)))
  stack = jnp.stack(levels)
  padded = jax.lax.optimization_barrier(  # see _extreme3
    jnp.pad(stack, ((0, 0), (1, 1), (1, 1)), mode='edge')
  )
  height, width = first_level.shape
  at = lambda y, x: padded[:, 1 + y : 1 + y + height, 1 + x : 1 + x + width]
  dxx = at(0, -1) - 2 * stack + at(0, 1)
  dyy = at(-1, 0) - 2 * stack + at(1, 0)
  dxy = 0.25 * (at(-1, -1) - at(-1, 1) - at(1, -1) + at(1, 1))
  norms = jnp.asarray(sigmas, jnp.float32)[:, None, None] ** 4
  responses = norms * (dxx * dyy - dxy * dxy)  # scale-normalised det H
  rows = jnp.arange(height)[:, None]
  columns = jnp.arange(width)[None, :]
  inside = (
    (rows >= border)
    & (rows < height - border)
    & (columns >= border)
    & (columns < width - border)
  )
  current = responses[1:-1]
  extremum = inside & (
    (
      (current >= _extreme3(responses, jnp.maximum))
      & (current > 0.8 * threshold)
    )
    | (
      (current <= _extreme3(responses, jnp.minimum))
      & (current < -0.8 * threshold)
    )
  )
  raw = jnp.where(extremum, jnp.abs(current), -jnp.inf).reshape(-1)
  raw, flat = jax.lax.top_k(raw, min(2 * max_points, raw.shape[0]))
  scale, row, column = jnp.unravel_index(flat, current.shape)
  steps = np.arange(-1, 2)
  deltas = (
    steps[:, None, None] * height * width
    + steps[None, :, None] * width
    + steps[None, None, :]
  )  # (3, 3, 3) flat steps in (s, y, x)
  neighbours = jnp.take(
    responses.reshape(-1),
    flat[:, None, None, None] + height * width + deltas,
    mode='clip',
  )  # padding rows may read anything
  offset, value, keep = _localise(neighbours, threshold, edge_ratio)
  scores = jnp.where(keep & (raw > -jnp.inf), jnp.abs(value), -jnp.inf)
  sigma = jnp.asarray(sigmas, jnp.float32)[scale + 1] * step ** offset[:, 2]
  distance = 2.0**octave
  candidates = (
    scores,
    (column + offset[:, 0]) * distance,
    (row + offset[:, 1]) * distance,
    sigma * distance,
    sigma / initial_sigma,
    octave * scales_per_octave + scale,
  )
  best, order = jax.lax.top_k(scores, min(max_points, scores.shape[0]))
  candidates = (best,) + tuple(part[order] for part in candidates[1:])
  next_level = levels[scales_per_octave][::2, ::2]
  return candidates, stack[:scales_per_octave], next_level


@functools.partial(
  jax.jit,
  static_argnames=(
    'max_points',
    'scales_per_octave',
    'initial_sigma',
    'threshold',
    'edge_ratio',
    'border',
  ),
)
def find_candidates(
  image,
  *,
  max_points=8192,
  scales_per_octave=3,
  initial_sigma=1.6,
  threshold=16.0 / 3.0,
  edge_ratio=10.0,
  border=5,
):
  """Localised Hessian extrema [16] of an image, the max_points best by |DoH|.

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    max_points, scales_per_octave, initial_sigma, threshold, edge_ratio,
      border: see `detect_hessian_affine`.

  Returns:
    Candidates (P = max_points rows) and the Pyramid the adaptation samples.
  """
  check_image(image)
  gray = jnp.round(image.astype(jnp.float32) @ jnp.asarray(GRAY_WEIGHTS))
  level = _blur(gray, float(np.sqrt(initial_sigma**2 - 0.25)))
  found, pixels, tables = [], [], []
  start, octave = 0, 0
  while min(level.shape) > 2 * border + 2:
    candidates, images, level_next = _octave_candidates(
      level,
      octave=octave,
      scales_per_octave=scales_per_octave,
      initial_sigma=initial_sigma,
      threshold=threshold**2,
      edge_ratio=edge_ratio,
      border=border,
      max_points=max_points,
    )
    found.append(candidates)
    pixels.append(jax.lax.optimization_barrier(images.reshape(-1)))
    height, width = level.shape
    tables += [
      (start + i * height * width, width, height, 2.0**octave)
      for i in range(scales_per_octave)
    ]
    start += scales_per_octave * height * width
    level, octave = level_next, octave + 1
  score, x, y, sigma, ratio, index = (
    jnp.concatenate(parts) for parts in zip(*found)
  )
  if score.shape[0] < max_points:  # a small image: pad with no-candidates
    padding = max_points - score.shape[0]
    score = jnp.pad(score, (0, padding), constant_values=-jnp.inf)
    x, y, sigma, ratio, index = (
      jnp.pad(part, (0, padding)) for part in (x, y, sigma, ratio, index)
    )
  score, order = jax.lax.top_k(score, max_points)
  candidates = Candidates(
    jnp.stack([x[order], y[order]], axis=1),
    sigma[order],
    ratio[order],
    index[order].astype(jnp.int32),
    score,
  )
  offsets, widths, heights, distances = (
    np.asarray(column) for column in zip(*tables)
  )
  # Copied into place: XLA's CPU concatenate is an order of magnitude slower.
  buffer = jnp.zeros(start + image.shape[1] + 2, jnp.float32)
  for offset, part in zip(offsets[::scales_per_octave], pixels):
    buffer = buffer.at[offset : offset + part.shape[0]].set(part)
  pyramid = Pyramid(
    buffer,
    jnp.asarray(offsets, jnp.int32),
    jnp.asarray(widths, jnp.float32),
    jnp.asarray(heights, jnp.float32),
    jnp.asarray(distances, jnp.float32),
  )
  return candidates, pyramid


@functools.partial(
  jax.jit,
  static_argnames=(
    'max_points',
    'scales_per_octave',
    'initial_sigma',
    'threshold',
    'edge_ratio',
    'border',
    'window',
    'iterations',
    'max_anisotropy',
    'convergence',
    'capacity',
  ),
)
def detect_hessian_affine(
  image,
  *,
  max_points=8192,
  scales_per_octave=3,
  initial_sigma=1.6,
  threshold=16.0 / 3.0,
  edge_ratio=10.0,
  border=5,
  window=19,
  iterations=16,
  max_anisotropy=6.0,
  convergence=0.05,
  capacity=64,
):
  """Hessian-affine keypoints [16] in JAX, fixed-size output (backend "jax").

  Follows Perdoch's detector: a Gaussian scale space (scales_per_octave
  levels per octave from initial_sigma, octaves halve the image), the
  scale-normalised determinant of the Hessian, 3x3x3 extrema above
  (0.8 threshold)^2 ... threshold^2 (maxima are blobs, minima saddles), a
  quadratic fit in position and scale (scale selection), an edge test, then
  affine shape adaptation (affine_adaptation.adapt_shapes). The max_points
  strongest |DoH| are adapted; points whose adaptation fails or whose
  measurement region leaves the image are invalid.

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    max_points: P, the fixed number of output rows (hesaff finds about
      3000-9000 points on a 1024 x 768 photo, all ranked by alpha later).
    scales_per_octave, initial_sigma: scale-space sampling.
    threshold: DoH threshold on a 0..255 image (squared internally).
    edge_ratio: maximal principal-curvature ratio of a response peak.
    border: pixels ignored at each octave's border.
    window: side of the patch (samples) for the second-moment matrix.
    iterations: most adaptation rounds of a point.
    max_anisotropy: largest axis ratio of a valid affine shape.
    convergence: largest 1 - sqrt(lambda_min / lambda_max) of the
      second-moment matrix, in two consecutive rounds, for convergence.
    capacity: points adapted at once (speed only).

  Returns:
    points float32 (P, 2) (x, y), shapes float32 (P, 2, 2) (unit circle ->
    measurement ellipse, affine_adaptation.MEASUREMENT_REGION * sigma * U)
    and valid bool (P,).
  """
  candidates, pyramid = find_candidates(
    image,
    max_points=max_points,
    scales_per_octave=scales_per_octave,
    initial_sigma=initial_sigma,
    threshold=threshold,
    edge_ratio=edge_ratio,
    border=border,
  )
  shapes, valid = affine_adaptation.adapt_shapes(
    pyramid,
    candidates,
    candidates.scores,
    jnp.asarray(image.shape[:2]),
    needed=max_points,
    capacity=capacity,
    window=window,
    iterations=iterations,
    max_anisotropy=max_anisotropy,
    convergence=convergence,
  )
  return candidates.points, shapes, valid
