"""Tests for regagg_jax.regions.keypoints (pyhesaff detection, N_max / N_min
rule); the backend dispatch is tested in test_proposal.py."""

import cv2
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from regagg_jax.regions import affine_adaptation
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import keypoints

IMAGE_SHAPE = (90, 120)  # H_I, W_I
GRID = (6, 8)  # H, W


def _alpha(seed=0):
  return np.random.default_rng(seed).uniform(0, 1, GRID).astype(np.float32)


def _resized(alpha):
  return cv2.resize(alpha, IMAGE_SHAPE[::-1], interpolation=cv2.INTER_LINEAR)


def _integer_points(count, seed=1):
  rng = np.random.default_rng(seed)
  flat = rng.choice(IMAGE_SHAPE[0] * IMAGE_SHAPE[1], count, replace=False)
  return np.stack([flat % IMAGE_SHAPE[1], flat // IMAGE_SHAPE[1]], 1).astype(
    np.float32
  )


def test_sample_alpha_equals_cv2_resize_at_pixels():
  alpha = _alpha()
  points = _integer_points(500)
  got = jax.jit(keypoints.sample_alpha)(alpha, points, GRID, IMAGE_SHAPE)
  want = _resized(alpha)[points[:, 1].astype(int), points[:, 0].astype(int)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_more_than_n_max_keeps_the_best():
  alpha = _alpha()
  points = _integer_points(300)
  valid = np.ones(300, bool)
  valid[::7] = False
  out, out_valid = keypoints.select_salient(
    jnp.asarray(points),
    jnp.asarray(valid),
    jnp.asarray(alpha),
    IMAGE_SHAPE,
    n_max=100,
    n_min=10,
  )
  assert out.shape == (100, 2) and out.dtype == jnp.float32
  assert out_valid.shape == (100,) and bool(jnp.all(out_valid))
  scores = _resized(alpha)[points[:, 1].astype(int), points[:, 0].astype(int)]
  scores = np.where(valid, scores.astype(np.float64), -np.inf)
  want = points[np.argsort(-scores, kind='stable')[:100]]
  np.testing.assert_array_equal(np.asarray(out), want)


def test_between_n_min_and_n_max_keeps_all_valid():
  alpha = _alpha(2)
  points = _integer_points(40)
  valid = np.arange(40) < 30
  out, out_valid = keypoints.select_salient(
    jnp.asarray(points),
    jnp.asarray(valid),
    jnp.asarray(alpha),
    IMAGE_SHAPE,
    n_max=64,
    n_min=20,
  )
  out_valid = np.asarray(out_valid)
  assert out_valid.sum() == 30 and np.all(out_valid[:30])
  kept = {tuple(p) for p in np.asarray(out)[out_valid]}
  assert kept == {tuple(p) for p in points[valid]}


def test_fewer_than_n_min_uses_alpha_maxima():
  alpha = _alpha(3)
  points = _integer_points(12)
  valid = np.ones(12, bool)
  out, out_valid = keypoints.select_salient(
    jnp.asarray(points),
    jnp.asarray(valid),
    jnp.asarray(alpha),
    IMAGE_SHAPE,
    n_max=64,
    n_min=25,
  )
  out, out_valid = np.asarray(out), np.asarray(out_valid)
  np.testing.assert_array_equal(out_valid, np.arange(64) < 25)
  resized = _resized(alpha).astype(np.float64)
  threshold = np.sort(resized.ravel())[::-1][24]
  chosen = resized[out[:25, 1].astype(int), out[:25, 0].astype(int)]
  assert len({tuple(p) for p in out[:25]}) == 25
  assert np.all(chosen >= threshold - 1e-6)
  np.testing.assert_allclose(
    np.sort(chosen)[::-1], np.sort(resized.ravel())[::-1][:25], atol=1e-6
  )


def test_mask_invariance_and_padded_variant():
  alpha = _alpha(4)
  points = _integer_points(80)
  valid = np.ones(80, bool)
  base = keypoints.select_salient(
    jnp.asarray(points),
    jnp.asarray(valid),
    jnp.asarray(alpha),
    IMAGE_SHAPE,
    n_max=50,
    n_min=10,
  )
  garbage = np.random.default_rng(5).uniform(0, 90, (40, 2)).astype(np.float32)
  mixed = np.concatenate([garbage[:20], points, garbage[20:]])
  mixed_valid = np.concatenate([np.zeros(20, bool), valid, np.zeros(20, bool)])
  padded_alpha = np.pad(alpha, ((0, 2), (0, 3)), constant_values=9.0)
  fn = jax.jit(
    keypoints.select_salient_padded,
    static_argnames=('padded_shape', 'n_max', 'n_min'),
  )
  got = fn(
    jnp.asarray(mixed),
    jnp.asarray(mixed_valid),
    jnp.asarray(padded_alpha),
    jnp.asarray(GRID),
    jnp.asarray(IMAGE_SHAPE),
    padded_shape=(128, 160),
    n_max=50,
    n_min=10,
  )
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(base[0]))
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(base[1]))
  # Fallback in a padded image never picks padding pixels or cells.
  got = fn(
    jnp.asarray(mixed),
    jnp.zeros(120, bool),
    jnp.asarray(padded_alpha),
    jnp.asarray(GRID),
    jnp.asarray(IMAGE_SHAPE),
    padded_shape=(128, 160),
    n_max=50,
    n_min=10,
  )
  want = keypoints.select_salient(
    jnp.asarray(points),
    jnp.zeros(80, bool),
    jnp.asarray(alpha),
    IMAGE_SHAPE,
    n_max=50,
    n_min=10,
  )
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))


def test_select_salient_bad_inputs_raise():
  points, valid = jnp.zeros((5, 2)), jnp.ones(5, bool)
  alpha = jnp.ones(GRID)
  with pytest.raises(ValueError):
    keypoints.select_salient(jnp.zeros((5, 3)), valid, alpha, IMAGE_SHAPE)
  with pytest.raises(TypeError):
    keypoints.select_salient(points, jnp.ones(5), alpha, IMAGE_SHAPE)
  with pytest.raises(ValueError):
    keypoints.select_salient(points, valid, jnp.ones(4), IMAGE_SHAPE)
  with pytest.raises(ValueError):
    keypoints.select_salient(
      points, valid, alpha, IMAGE_SHAPE, n_max=10, n_min=20
    )


def _noise_image(shape=(48, 64), seed=6):
  """uint8 (H_I, W_I, 3) smoothed noise: some keypoints, cheap to detect."""
  noise = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
  gray = cv2.GaussianBlur(noise, (0, 0), 2.0)
  gray = 255 * (gray - gray.min()) / (gray.max() - gray.min())
  return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


def test_detect_hesaff_pads_to_pad_multiple():
  pytest.importorskip('pyhesaff')
  image = _noise_image()
  points, shapes, valid = keypoints.detect_hesaff(image, pad_multiple=64)
  count = int(np.sum(valid))
  assert count > 0
  assert points.shape[0] % 64 == 0 and points.shape[0] >= count
  assert points.shape[1:] == (2,) and shapes.shape[1:] == (2, 2)
  assert points.dtype == jnp.float32 and valid.dtype == jnp.bool_
  np.testing.assert_array_equal(
    np.asarray(valid), np.arange(points.shape[0]) < count
  )
  assert not np.any(np.asarray(points)[count:])
  # Lower-triangular hesaff shapes [[a, 0], [c, d]].
  assert not np.any(np.asarray(shapes)[:, 0, 1])


def test_detect_hesaff_bad_images_raise():
  with pytest.raises(TypeError):
    keypoints.detect_hesaff(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(ValueError):
    keypoints.detect_hesaff(np.zeros((8, 8), np.uint8))


def _assert_same_selection(got, want, alpha_at):
  """Equal point sets and validity; the order may differ only between
  points whose alpha agrees to float32 rounding (XLA fuses differently)."""
  got_points, got_valid = (np.asarray(a) for a in got)
  want_points, want_valid = (np.asarray(a) for a in want)
  np.testing.assert_array_equal(got_valid, want_valid)
  assert {tuple(p) for p in got_points[got_valid]} == {
    tuple(p) for p in want_points[want_valid]
  }
  differ = np.any(got_points != want_points, axis=1) & want_valid
  np.testing.assert_allclose(
    alpha_at(got_points[differ]), alpha_at(want_points[differ]), rtol=1e-6
  )


def test_detect_salient_equals_detection_then_selection():
  # The fused path (adaptation in alpha order, stopped early) selects what
  # the jax detector followed by the N_max / N_min rule selects, also for an
  # image padded into a larger canvas.
  image = _noise_image((64, 96), seed=11)
  alpha = np.random.default_rng(12).uniform(0, 1, (4, 6)).astype(np.float32)
  for canvas, cells in (((80, 128), (5, 8)),):
    padded = np.zeros(canvas + (3,), np.uint8)
    padded[:64, :96] = image
    padded_alpha = np.zeros(cells, np.float32)
    padded_alpha[:4, :6] = alpha
    size, grid = jnp.asarray((64, 96)), jnp.asarray((4, 6))
    points, shapes, valid = hessian_affine.detect_hessian_affine(
      jnp.asarray(padded), max_points=128
    )
    valid &= affine_adaptation.measured_inside(points, shapes, size)
    assert int(valid.sum()) > 12
    for n_max, n_min in ((8, 4), (128, 100)):  # stops early; falls back
      want = keypoints.select_salient_padded(
        points,
        valid,
        jnp.asarray(padded_alpha),
        grid,
        size,
        padded_shape=canvas,
        n_max=n_max,
        n_min=n_min,
      )
      got = jax.jit(
        keypoints.detect_salient,
        static_argnames=('padded_shape', 'n_max', 'n_min', 'max_points'),
      )(
        jnp.asarray(padded),
        jnp.asarray(padded_alpha),
        grid,
        size,
        padded_shape=canvas,
        n_max=n_max,
        n_min=n_min,
        max_points=128,
      )
      _assert_same_selection(
        got,
        want,
        lambda p: np.asarray(
          keypoints.sample_alpha(
            jnp.asarray(padded_alpha), jnp.asarray(p), grid, size
          )
        ),
      )
