"""Tests for regagg_jax.regions.hessian_affine (the JAX Hessian-affine detector [16])."""

import pathlib

import cv2
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from regagg_jax.regions import affine_adaptation
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import keypoints

SAMPLES = pathlib.Path(__file__).parents[2] / 'data' / 'samples'


def _blob_image(centre, sigma, shape=(96, 128), covariance=None):
  """Dark Gaussian blob on a bright background, uint8 RGB."""
  rows, columns = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
  offsets = np.stack([columns - centre[0], rows - centre[1]], -1)
  if covariance is None:
    covariance = np.eye(2) * sigma**2
  inverse = np.linalg.inv(covariance)
  exponent = np.einsum('hwi,ij,hwj->hw', offsets, inverse, offsets)
  gray = 230.0 - 180.0 * np.exp(-0.5 * exponent)
  return np.repeat(np.round(gray)[..., None], 3, axis=2).astype(np.uint8)


def test_hesaff_reference_finds_a_blob_at_the_measurement_region_scale():
  # The "hesaff" backend is the reference the JAX detector follows; its
  # shapes are MEASUREMENT_REGION * sigma * U as assumed below.
  pytest.importorskip('pyhesaff')
  image = _blob_image((60.3, 40.6), 6.0)
  points, shapes, valid = keypoints.detect_hesaff(image)
  assert points.shape == (1024, 2) and shapes.shape == (1024, 2, 2)
  points, shapes = (
    np.asarray(points)[np.asarray(valid)],
    np.asarray(shapes)[np.asarray(valid)],
  )
  distance = np.linalg.norm(points - [60.3, 40.6], axis=1)
  best = np.argmin(distance)
  assert distance[best] < 1.0
  sigma = (
    np.sqrt(abs(np.linalg.det(shapes[best])))
    / affine_adaptation.MEASUREMENT_REGION
  )
  assert 0.8 * 6.0 < sigma < 1.25 * 6.0


def test_bad_inputs_raise():
  with pytest.raises(TypeError):
    hessian_affine.detect_hessian_affine(jnp.zeros((32, 32, 3), jnp.float32))
  with pytest.raises(ValueError):
    hessian_affine.detect_hessian_affine(jnp.zeros((32, 32), jnp.uint8))
  with pytest.raises(ValueError):
    hessian_affine.detect_hessian_affine(jnp.zeros((32, 32, 4), jnp.uint8))


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


def _axes(shape):
  """Axis ratio and major-axis angle (degrees mod 180) of a shape matrix."""
  left, singular, _ = np.linalg.svd(shape)
  angle = np.rad2deg(np.arctan2(left[1, 0], left[0, 0])) % 180.0
  return singular[0] / singular[1], angle


def _detections(image):
  points, shapes, valid = hessian_affine.detect_hessian_affine(
    jnp.asarray(image), max_points=32
  )
  assert points.shape == (32, 2) and shapes.shape == (32, 2, 2)
  assert points.dtype == jnp.float32 and valid.dtype == jnp.bool_
  valid = np.asarray(valid)
  return np.asarray(points)[valid], np.asarray(shapes)[valid]


@pytest.mark.parametrize(
  'centre,sigma', [((60.3, 40.6), 6.0), ((40.0, 52.5), 3.5)]
)
def test_finds_blob_position_and_scale(centre, sigma):
  points, shapes = _detections(_blob_image(centre, sigma))
  distance = np.linalg.norm(points - centre, axis=1)
  best = np.argmin(distance)
  assert distance[best] < 0.5
  found = (
    np.sqrt(abs(np.linalg.det(shapes[best])))
    / affine_adaptation.MEASUREMENT_REGION
  )
  assert abs(found / sigma - 1.0) < 0.1
  ratio, _ = _axes(shapes[best])
  assert ratio < 1.05  # isotropic blob, isotropic shape


def test_adapts_to_an_affine_blob():
  angle = np.deg2rad(30.0)
  rotation = np.array(
    [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
  )
  covariance = rotation @ np.diag([8.0**2, 4.0**2]) @ rotation.T
  centre = (64.2, 48.7)
  points, shapes = _detections(_blob_image(centre, None, covariance=covariance))
  best = np.argmin(np.linalg.norm(points - centre, axis=1))
  assert np.linalg.norm(points[best] - centre) < 0.5
  ratio, major = _axes(shapes[best])
  # The shape is elongated along the blob's major axis (30 degrees). Its axis
  # ratio lies between that of the blob (2) and that of the blob blurred by
  # the isotropic differentiation scale (about 1.4), as with hesaff.
  assert 1.35 < ratio < 2.0
  assert min(abs(major - 30.0), 180.0 - abs(major - 30.0)) < 5.0


def test_agrees_with_hesaff_on_a_sample():
  pytest.importorskip('pyhesaff')
  image = cv2.cvtColor(
    cv2.imread(str(SAMPLES / 'ukbench00004.jpg')), cv2.COLOR_BGR2RGB
  )[::2, ::2].copy()
  ours, _, ours_valid = hessian_affine.detect_hessian_affine(
    jnp.asarray(image), max_points=512
  )
  theirs, _, theirs_valid = keypoints.detect_hesaff(image)
  ours = np.asarray(ours)[np.asarray(ours_valid)]
  theirs = np.asarray(theirs)[np.asarray(theirs_valid)]
  assert len(ours) > 20
  distance = np.linalg.norm(ours[:, None] - theirs[None], axis=-1)
  assert np.mean(distance.min(axis=1) <= 2.0) > 0.8


# ---- float64 numpy references of the two stages -------------------------


def _scene(shape=(96, 128), seed=5):
  """uint8 RGB: dark and bright Gaussian blobs (some elongated) on gray."""
  rng = np.random.default_rng(seed)
  rows, columns = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
  gray = np.full(shape, 128.0)
  for _ in range(14):
    centre = rng.uniform(10, [shape[1] - 10, shape[0] - 10])
    sigmas = rng.uniform(1.5, 5.0, 2)
    angle = rng.uniform(0, np.pi)
    rotation = np.array(
      [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    inverse = np.linalg.inv(rotation @ np.diag(sigmas**2) @ rotation.T)
    offsets = np.stack([columns - centre[0], rows - centre[1]], -1)
    exponent = np.einsum('hwi,ij,hwj->hw', offsets, inverse, offsets)
    gray += rng.choice([-1, 1]) * rng.uniform(60, 110) * np.exp(-0.5 * exponent)
  gray = np.clip(np.round(gray), 0, 255)
  return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)


def _reference_blur(image, sigma):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  radius = int(np.ceil(3.0 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  rows = ndimage.correlate1d(image, taps, axis=0, mode='nearest')
  return ndimage.correlate1d(rows, taps, axis=1, mode='nearest')


def _reference_candidates(
  image,
  threshold=16.0 / 3.0,
  edge_ratio=10.0,
  border=5,
  spo=3,
  initial_sigma=1.6,
):
  """float64 scale space, DoH extrema and localisation: rows (x, y, sigma, |DoH|)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  gray = np.round(
    image.astype(np.float64) @ np.asarray(hessian_affine.GRAY_WEIGHTS)
  ).astype(np.float64)
  level = _reference_blur(gray, np.sqrt(initial_sigma**2 - 0.25))
  step = 2.0 ** (1.0 / spo)
  sigmas = initial_sigma * step ** np.arange(spo + 2)
  found, octave = [], 0
  while min(level.shape) > 2 * border + 2:
    levels = [level]
    for i in range(1, spo + 2):
      levels.append(
        _reference_blur(levels[-1], sigmas[i - 1] * np.sqrt(step**2 - 1))
      )
    stack = np.pad(np.stack(levels), ((0, 0), (1, 1), (1, 1)), mode='edge')
    dxx = stack[:, 1:-1, :-2] - 2 * stack[:, 1:-1, 1:-1] + stack[:, 1:-1, 2:]
    dyy = stack[:, :-2, 1:-1] - 2 * stack[:, 1:-1, 1:-1] + stack[:, 2:, 1:-1]
    dxy = 0.25 * (
      stack[:, :-2, :-2]
      - stack[:, :-2, 2:]
      - stack[:, 2:, :-2]
      + stack[:, 2:, 2:]
    )
    response = sigmas[:, None, None] ** 4 * (dxx * dyy - dxy**2)
    high = ndimage.maximum_filter(response, size=3, mode='nearest')
    low = ndimage.minimum_filter(response, size=3, mode='nearest')
    t2 = threshold**2
    height, width = level.shape
    for s in range(1, spo + 1):
      for y in range(border, height - border):
        for x in range(border, width - border):
          r = response[s, y, x]
          if not (
            (r >= high[s, y, x] and r > 0.8 * t2)
            or (r <= low[s, y, x] and r < -0.8 * t2)
          ):
            continue
          n = response[s - 1 : s + 2, y - 1 : y + 2, x - 1 : x + 2]
          g = 0.5 * np.array(
            [
              n[1, 1, 2] - n[1, 1, 0],
              n[1, 2, 1] - n[1, 0, 1],
              n[2, 1, 1] - n[0, 1, 1],
            ]
          )
          hxx = n[1, 1, 2] - 2 * r + n[1, 1, 0]
          hyy = n[1, 2, 1] - 2 * r + n[1, 0, 1]
          hss = n[2, 1, 1] - 2 * r + n[0, 1, 1]
          hxy = 0.25 * (n[1, 0, 0] - n[1, 0, 2] - n[1, 2, 0] + n[1, 2, 2])
          hxs = 0.25 * (n[0, 1, 0] - n[0, 1, 2] - n[2, 1, 0] + n[2, 1, 2])
          hys = 0.25 * (n[0, 0, 1] - n[0, 2, 1] - n[2, 0, 1] + n[2, 2, 1])
          hessian = np.array(
            [[hxx, hxy, hxs], [hxy, hyy, hys], [hxs, hys, hss]]
          )
          offset = -np.linalg.solve(hessian, g)
          value = r + 0.5 * g @ offset
          edge = (hxx + hyy) ** 2 / (hxx * hyy - hxy**2)
          if (
            0 <= edge < (edge_ratio + 1) ** 2 / edge_ratio
            and np.all(np.abs(offset) <= 1.5)
            and abs(value) >= t2
          ):
            found.append(
              [
                (x + offset[0]) * 2**octave,
                (y + offset[1]) * 2**octave,
                sigmas[s] * step ** offset[2] * 2**octave,
                abs(value),
              ]
            )
    level = levels[spo][::2, ::2]
    octave += 1
  return np.asarray(found)


def test_candidates_match_numpy_float64_reference():
  image = _scene()
  want = _reference_candidates(image)
  candidates, _ = hessian_affine.find_candidates(
    jnp.asarray(image), max_points=512
  )
  real = np.asarray(candidates.scores) > -np.inf
  assert 10 < real.sum() == len(want) < 512
  got = np.concatenate(
    [
      np.asarray(candidates.points)[real],
      np.asarray(candidates.sigmas)[real, None],
      np.asarray(candidates.scores)[real, None],
    ],
    axis=1,
  )
  assert np.all(np.diff(got[:, 3]) <= 0)  # best |DoH| first
  for row in want:
    distance = np.linalg.norm(got[:, :2] - row[:2], axis=1)
    best = np.argmin(distance)
    assert distance[best] < 1e-3, row
    np.testing.assert_allclose(got[best, 2:], row[2:], rtol=1e-3)


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
  image = _scene(seed=7)
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
  image = _scene(seed=9)
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
