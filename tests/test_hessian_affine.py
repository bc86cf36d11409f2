"""Tests for regagg_jax.hessian_affine (the JAX Hessian-affine detector [16])."""

import pathlib

import cv2
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from regagg_jax import hessian_affine
from regagg_jax import keypoints

SAMPLES = pathlib.Path(__file__).parents[1] / "data" / "samples"


def _blob_image(centre, sigma, shape=(96, 128), covariance=None):
  """Dark Gaussian blob on a bright background, uint8 RGB."""
  rows, columns = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
  offsets = np.stack([columns - centre[0], rows - centre[1]], -1)
  if covariance is None:
    covariance = np.eye(2) * sigma ** 2
  inverse = np.linalg.inv(covariance)
  exponent = np.einsum("hwi,ij,hwj->hw", offsets, inverse, offsets)
  gray = 230.0 - 180.0 * np.exp(-0.5 * exponent)
  return np.repeat(np.round(gray)[..., None], 3, axis=2).astype(np.uint8)


def test_hesaff_reference_finds_a_blob_at_the_measurement_region_scale():
  # The "hesaff" backend is the reference the JAX detector follows; its
  # shapes are MEASUREMENT_REGION * sigma * U as assumed below.
  pytest.importorskip("pyhesaff")
  image = _blob_image((60.3, 40.6), 6.0)
  points, shapes, valid = keypoints.detect_shapes(image, backend="hesaff")
  assert points.shape == (1024, 2) and shapes.shape == (1024, 2, 2)
  points, shapes = np.asarray(points)[np.asarray(valid)], np.asarray(shapes)[
      np.asarray(valid)]
  distance = np.linalg.norm(points - [60.3, 40.6], axis=1)
  best = np.argmin(distance)
  assert distance[best] < 1.0
  sigma = (np.sqrt(abs(np.linalg.det(shapes[best])))
           / hessian_affine.MEASUREMENT_REGION)
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
  got = jax.jit(hessian_affine.measured_inside)(points, shapes,
                                                jnp.asarray(image_size))
  assert got.shape == (64,) and got.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(got), want)


def _axes(shape):
  """Axis ratio and major-axis angle (degrees mod 180) of a shape matrix."""
  left, singular, _ = np.linalg.svd(shape)
  angle = np.rad2deg(np.arctan2(left[1, 0], left[0, 0])) % 180.0
  return singular[0] / singular[1], angle


def _detections(image):
  points, shapes, valid = hessian_affine.detect_hessian_affine(
      jnp.asarray(image), max_points=32)
  assert points.shape == (32, 2) and shapes.shape == (32, 2, 2)
  assert points.dtype == jnp.float32 and valid.dtype == jnp.bool_
  valid = np.asarray(valid)
  return np.asarray(points)[valid], np.asarray(shapes)[valid]


@pytest.mark.parametrize("centre,sigma", [((60.3, 40.6), 6.0),
                                          ((40.0, 52.5), 3.5)])
def test_finds_blob_position_and_scale(centre, sigma):
  points, shapes = _detections(_blob_image(centre, sigma))
  distance = np.linalg.norm(points - centre, axis=1)
  best = np.argmin(distance)
  assert distance[best] < 0.5
  found = (np.sqrt(abs(np.linalg.det(shapes[best])))
           / hessian_affine.MEASUREMENT_REGION)
  assert abs(found / sigma - 1.0) < 0.1
  ratio, _ = _axes(shapes[best])
  assert ratio < 1.05  # isotropic blob, isotropic shape


def test_adapts_to_an_affine_blob():
  angle = np.deg2rad(30.0)
  rotation = np.array([[np.cos(angle), -np.sin(angle)],
                       [np.sin(angle), np.cos(angle)]])
  covariance = rotation @ np.diag([8.0 ** 2, 4.0 ** 2]) @ rotation.T
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
  pytest.importorskip("pyhesaff")
  image = cv2.cvtColor(cv2.imread(str(SAMPLES / "ukbench00004.jpg")),
                       cv2.COLOR_BGR2RGB)[::2, ::2].copy()
  ours, _, ours_valid = hessian_affine.detect_hessian_affine(
      jnp.asarray(image), max_points=512)
  theirs, theirs_valid = keypoints.detect(image, backend="hesaff")
  ours = np.asarray(ours)[np.asarray(ours_valid)]
  theirs = np.asarray(theirs)[np.asarray(theirs_valid)]
  assert len(ours) > 20
  distance = np.linalg.norm(ours[:, None] - theirs[None], axis=-1)
  assert np.mean(distance.min(axis=1) <= 2.0) > 0.8
