"""One octave of the Hessian-affine detector's scale space, in JAX.

  blur                separable Gaussian blur, replicated border
  octave_candidates   an octave's levels, the scale-normalised determinant
                      of the Hessian (DoH), its 3x3x3 extrema and their
                      localisation (quadratic fit in x, y and scale, edge
                      test, DoH threshold)

`hessian_affine.find_candidates` runs it octave after octave (Mikolajczyk
and Schmid [16], as Perdoch's hesaff); coordinates are (x, y) pixels with
pixel centres at integers.
"""

import jax
import jax.numpy as jnp
import numpy as np


def blur(image, sigma):
  """float32 (H, W) Gaussian blur of a float32 (H, W) image, radius
  ceil(3 sigma), replicated border.

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


def octave_candidates(
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

  Only the 2 max_points strongest raw extrema are localised.

  Args:
    first_level: float32 (H_o, W_o) the octave's first blurred level.
    octave: its index o (image pixels per octave pixel: 2^o).
    scales_per_octave, initial_sigma: scale-space sampling.
    threshold: the squared DoH threshold (extrema above 0.8 of it are
      localised).
    edge_ratio: maximal principal-curvature ratio of a response peak.
    border: octave pixels ignored at each border.
    max_points: the candidates kept.

  Returns:
    The candidates' (score, x, y, sigma, ratio, level), float32 / int32
    (P_o,) each, P_o <= max_points, in image pixels (score -inf: none);
    the images float32 (S, H_o, W_o) the adaptation samples (the level
    below each detection level, as hesaff); the next octave's first level.
  """
  step = 2.0 ** (1.0 / scales_per_octave)
  sigmas = [initial_sigma * step**i for i in range(scales_per_octave + 2)]
  levels = [first_level]
  for i in range(1, scales_per_octave + 2):
    levels.append(blur(levels[-1], sigmas[i - 1] * np.sqrt(step**2 - 1)))
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
