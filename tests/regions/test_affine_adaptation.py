"""Tests for regagg_jax.regions.affine_adaptation: hesaff's shape adaptation
against a float64 numpy reference, the slot queue, the measurement region."""

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.regions import affine_adaptation
from regagg_jax.regions import hessian_affine
from tests.regions.test_hessian_affine import scene


def test_measured_inside_matches_numpy():
  rng = np.random.default_rng(0)
  points = rng.uniform(-5, 70, (64, 2)).astype(np.float32)
  shapes = rng.normal(0, 6, (64, 2, 2)).astype(np.float32)
  image_size = (48, 64)  # H_I, W_I
  want = np.zeros(64, bool)
  for p in range(64):
    inside = True
    for corner in [(1, 1), (1, -1), (-1, 1), (-1, -1)]:
      x, y = shapes[p].astype(np.float64) @ corner + points[p]
      inside &= 0 <= x <= image_size[1] - 1 and 0 <= y <= image_size[0] - 1
    want[p] = inside
  assert 0 < want.sum() < 64
  got = jax.jit(affine_adaptation.measured_inside)(
    points, shapes, jnp.asarray(image_size)
  )
  assert got.shape == (64,) and got.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(got), want)


def _level_image(pyramid, level):
  offset = int(pyramid.offsets[level])
  height, width = int(pyramid.heights[level]), int(pyramid.widths[level])
  return np.asarray(
    pyramid.pixels[offset : offset + height * width], np.float64
  ).reshape(height, width)


def _reference_adaptation(
  image,
  x,
  y,
  ratio,
  window=19,
  iterations=16,
  max_anisotropy=6.0,
  convergence=0.05,
):
  """hesaff's rule in float64: U (det 1) on success, else None."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  half = window // 2
  u, v = np.meshgrid(np.arange(-half, half + 1.0), np.arange(-half, half + 1.0))
  weight = np.exp(-0.5 * (u**2 + v**2) / (half / 3.0) ** 2)
  shape, previous = np.eye(2), 0.0
  for _ in range(iterations):
    xs = np.clip(
      x + ratio * (shape[0, 0] * u + shape[0, 1] * v), 0, image.shape[1] - 1
    )
    ys = np.clip(
      y + ratio * (shape[1, 0] * u + shape[1, 1] * v), 0, image.shape[0] - 1
    )
    patch = ndimage.map_coordinates(image, [ys, xs], order=1)
    gx, gy = np.gradient(patch, axis=1), np.gradient(patch, axis=0)
    mu = np.array(
      [
        [np.sum(weight * gx * gx), np.sum(weight * gx * gy)],
        [np.sum(weight * gx * gy), np.sum(weight * gy * gy)],
      ]
    )
    eigenvalues, vectors = np.linalg.eigh(mu)
    if eigenvalues[0] <= 0:
      return None
    change = 1.0 - np.sqrt(eigenvalues[0] / eigenvalues[1])
    shape = (vectors / np.sqrt(eigenvalues)) @ vectors.T @ shape
    shape /= np.sqrt(abs(np.linalg.det(shape)))
    singular = np.linalg.svd(shape, compute_uv=False)
    if singular[0] / singular[1] > max_anisotropy:
      return None
    if change < convergence and previous < convergence:
      return shape
    previous = change
  return None


def test_adaptation_matches_numpy_float64_reference():
  image = scene(seed=7)
  candidates, pyramid = hessian_affine.find_candidates(
    jnp.asarray(image), max_points=64
  )
  shapes, valid = affine_adaptation.adapt_shapes(
    pyramid,
    candidates,
    candidates.scores,
    jnp.asarray(image.shape[:2]),
    needed=64,
    capacity=16,
  )
  shapes, valid = np.asarray(shapes, np.float64), np.asarray(valid)
  points = np.asarray(candidates.points, np.float64)
  agree, compared = 0, 0
  for p in np.flatnonzero(np.asarray(candidates.scores) > -np.inf):
    level = int(candidates.levels[p])
    distance = float(pyramid.distances[level])
    shape = _reference_adaptation(
      _level_image(pyramid, level),
      points[p, 0] / distance,
      points[p, 1] / distance,
      float(candidates.ratios[p]),
    )
    measured = (
      None
      if shape is None
      else (
        affine_adaptation.MEASUREMENT_REGION
        * float(candidates.sigmas[p])
        * shape
      )
    )
    want = measured is not None and bool(
      affine_adaptation.measured_inside(
        points[p : p + 1], measured[None], image.shape[:2]
      )[0]
    )
    compared += 1
    agree += want == valid[p]
    if want and valid[p]:
      np.testing.assert_allclose(
        shapes[p], measured, rtol=2e-3, atol=2e-3 * np.abs(measured).max()
      )
  assert compared > 10 and valid.sum() > 5
  assert agree >= compared - 1  # float32 vs float64 at a decision boundary


def test_adaptation_queue_stops_early_and_ignores_capacity():
  image = scene(seed=9)
  candidates, pyramid = hessian_affine.find_candidates(
    jnp.asarray(image), max_points=64
  )
  size = jnp.asarray(image.shape[:2])
  priority = jnp.asarray(np.random.default_rng(0).permutation(64), jnp.float32)
  priority = jnp.where(candidates.scores > -jnp.inf, priority, -jnp.inf)
  full_shapes, full = affine_adaptation.adapt_shapes(
    pyramid, candidates, priority, size, needed=64, capacity=64
  )
  small_shapes, small = affine_adaptation.adapt_shapes(
    pyramid, candidates, priority, size, needed=64, capacity=5
  )
  np.testing.assert_array_equal(np.asarray(small), np.asarray(full))
  np.testing.assert_allclose(
    np.asarray(small_shapes), np.asarray(full_shapes), rtol=1e-5, atol=1e-5
  )
  full = np.asarray(full)
  order = np.argsort(-np.asarray(priority), kind='stable')
  assert full.sum() > 6
  for needed in (1, 3, 6):
    _, early = affine_adaptation.adapt_shapes(
      pyramid, candidates, priority, size, needed=needed, capacity=4
    )
    early = np.asarray(early)
    # The first `needed` valid points in priority order are found, never a
    # point the full run rejects, and the rest is left unadapted.
    first = order[full[order]][:needed]
    assert early[first].all() and not np.any(early & ~full)
    if needed == 1:
      assert early.sum() < full.sum()
