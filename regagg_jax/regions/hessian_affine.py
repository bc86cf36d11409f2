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

Two stages: `find_candidates` (scale space, extrema, localisation, octave
by octave in scale_space.octave_candidates; a fixed top-P by |DoH|) and
affine_adaptation.adapt_shapes, which runs the adaptation on a fixed number
of slots refilled from a priority queue, so that its cost follows the rounds
each point really needs and it can stop once the `needed` first valid
points of the queue are known
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
from regagg_jax.regions import scale_space

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
  level = scale_space.blur(gray, float(np.sqrt(initial_sigma**2 - 0.25)))
  found, pixels, tables = [], [], []
  start, octave = 0, 0
  while min(level.shape) > 2 * border + 2:
    candidates, images, level_next = scale_space.octave_candidates(
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
