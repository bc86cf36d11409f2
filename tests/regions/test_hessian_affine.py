"""Tests for regagg_jax.regions.hessian_affine (the JAX Hessian-affine detector [16])."""

import pathlib

import cv2
import numpy as np
import pytest

import jax.numpy as jnp

from regagg_jax.regions import affine_adaptation
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import keypoints
from tests.regions.test_scale_space import reference_blur

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


def scene(shape=(96, 128), seed=5):
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
  level = reference_blur(gray, np.sqrt(initial_sigma**2 - 0.25))
  step = 2.0 ** (1.0 / spo)
  sigmas = initial_sigma * step ** np.arange(spo + 2)
  found, octave = [], 0
  while min(level.shape) > 2 * border + 2:
    levels = [level]
    for i in range(1, spo + 2):
      levels.append(
        reference_blur(levels[-1], sigmas[i - 1] * np.sqrt(step**2 - 1))
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
  image = scene()
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
