"""Tests for regagg_jax.regions.scale_space: the Gaussian blur and one
octave's localised DoH extrema against float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.regions import scale_space


def reference_blur(image, sigma):
  """float64 separable Gaussian blur, radius ceil(3 sigma), edge replicated."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  radius = int(np.ceil(3.0 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  rows = ndimage.correlate1d(image, taps, axis=0, mode='nearest')
  return ndimage.correlate1d(rows, taps, axis=1, mode='nearest')


@pytest.mark.parametrize('sigma', [0.8, 1.6, 2.5])
def test_blur_matches_the_float64_reference(sigma):
  image = np.random.default_rng(3).uniform(0, 255, (23, 31))
  got = jax.jit(scale_space.blur, static_argnums=1)(
    jnp.asarray(image, jnp.float32), sigma
  )
  assert got.shape == image.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(
    np.asarray(got), reference_blur(image, sigma), rtol=1e-5, atol=1e-3
  )


def _blob(centre, sigma, shape=(64, 80)):
  """float64 (H, W) dark Gaussian blob of standard deviation sigma."""
  rows, columns = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
  squared = (columns - centre[0]) ** 2 + (rows - centre[1]) ** 2
  return 230.0 - 180.0 * np.exp(-0.5 * squared / sigma**2)


@pytest.mark.parametrize('octave', [0, 1])
def test_octave_candidates_localise_a_blob_in_image_pixels(octave):
  centre, sigma = (37.3, 29.6), 2.6
  level = scale_space.blur(jnp.asarray(_blob(centre, sigma), jnp.float32), 1.6)
  candidates, images, next_level = scale_space.octave_candidates(
    level,
    octave=octave,
    scales_per_octave=3,
    initial_sigma=1.6,
    threshold=(16.0 / 3.0) ** 2,
    edge_ratio=10.0,
    border=5,
    max_points=16,
  )
  scores, x, y, sigmas, ratios, levels = (np.asarray(c) for c in candidates)
  assert scores.shape == (16,) and images.shape == (3, 64, 80)
  assert next_level.shape == (32, 40)
  assert np.all(np.diff(scores[scores > -np.inf]) <= 0)  # best |DoH| first
  distance = 2.0**octave  # image pixels per octave pixel
  # The DoH of a Gaussian blob peaks at its centre, at a scale
  # sqrt(sigma^2 + 1.6^2) (the blob seen through the level's blur).
  np.testing.assert_allclose(
    [x[0], y[0]], np.multiply(centre, distance), atol=0.3 * distance
  )
  scale = np.hypot(sigma, 1.6) * distance
  assert 0.8 * scale < sigmas[0] < 1.25 * scale
  np.testing.assert_allclose(ratios[0], sigmas[0] / distance / 1.6, rtol=1e-6)
  assert 3 * octave <= levels[0] < 3 * octave + 3
