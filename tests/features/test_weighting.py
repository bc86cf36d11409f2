"""Tests of regagg_jax.features.weighting against float64 numpy references of eq. (1)-(2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.features import weighting

HEIGHT, WIDTH, CHANNELS = 7, 9, 64


def sparse_features(rng, height=HEIGHT, width=WIDTH, channels=CHANNELS):
  """Non-negative conv5-like activations, 30 % non-zero."""
  values = rng.gamma(1.5, 2.0, size=(height, width, channels))
  return (values * (rng.random(values.shape) < 0.3)).astype(np.float32)


def reference_alpha(features, valid, a=2.0, b=1.0):
  """eq. (1) (CroW with a, b) in float64, loops over cells."""
  features = features.astype(np.float64)
  summed = np.zeros(valid.shape)
  for y in range(valid.shape[0]):
    for x in range(valid.shape[1]):
      if valid[y, x]:
        summed[y, x] = features[y, x].sum()
  norm = (summed**a).sum() ** (1 / a)
  return (summed / norm) ** (1 / b) if norm > 0 else summed


def reference_beta(features, valid, eps=1e-6):
  """eq. (2) in float64, loops over channels."""
  num_channels = features.shape[-1]
  area = max(valid.sum(), 1)
  fraction = np.array(
    [
      np.sum((features[..., k] > 0) & valid) / area for k in range(num_channels)
    ],
    dtype=np.float64,
  )
  return np.log((num_channels * eps + fraction.sum()) / (eps + fraction))


def padded_mask(rng):
  valid = np.zeros((HEIGHT, WIDTH), bool)
  valid[: rng.integers(3, HEIGHT + 1), : rng.integers(3, WIDTH + 1)] = True
  return valid


def test_spatial_weights_matches_eq1():
  rng = np.random.default_rng(0)
  features = sparse_features(rng)
  for valid in (np.ones((HEIGHT, WIDTH), bool), padded_mask(rng)):
    alpha = jax.jit(weighting.spatial_weights)(features, valid)
    assert alpha.shape == (HEIGHT, WIDTH) and alpha.dtype == jnp.float32
    np.testing.assert_allclose(
      alpha, reference_alpha(features, valid), rtol=1e-5, atol=1e-7
    )
  alpha = jax.jit(weighting.spatial_weights)(features)  # valid=None
  np.testing.assert_allclose(
    alpha,
    reference_alpha(features, np.ones((HEIGHT, WIDTH), bool)),
    rtol=1e-5,
    atol=1e-7,
  )


def test_spatial_weights_crow_power():
  rng = np.random.default_rng(1)
  features = sparse_features(rng)
  valid = padded_mask(rng)
  fn = jax.jit(lambda f, v: weighting.spatial_weights(f, v, root=2.0))
  np.testing.assert_allclose(
    fn(features, valid),
    reference_alpha(features, valid, b=2.0),
    rtol=1e-5,
    atol=1e-7,
  )


def test_channel_weights_matches_eq2():
  rng = np.random.default_rng(2)
  features = sparse_features(rng)
  for valid in (np.ones((HEIGHT, WIDTH), bool), padded_mask(rng)):
    beta = jax.jit(weighting.channel_weights)(features, valid)
    assert beta.shape == (CHANNELS,) and beta.dtype == jnp.float32
    np.testing.assert_allclose(beta, reference_beta(features, valid), rtol=1e-5)


def test_black_image_and_dead_channels_are_finite():
  features = np.zeros((HEIGHT, WIDTH, CHANNELS), np.float32)
  alpha = jax.jit(weighting.spatial_weights)(features)
  beta = jax.jit(weighting.channel_weights)(features)
  np.testing.assert_array_equal(alpha, 0.0)
  np.testing.assert_allclose(beta, np.log(CHANNELS), rtol=1e-6)
  rng = np.random.default_rng(3)
  features = sparse_features(rng)
  features[..., :5] = 0.0  # channels that never fire
  beta = jax.jit(weighting.channel_weights)(features)
  assert np.all(np.isfinite(beta))
  np.testing.assert_allclose(
    beta, reference_beta(features, np.ones((HEIGHT, WIDTH), bool)), rtol=1e-5
  )
  assert np.all(beta[:5] > beta[5:].max())
  empty = np.zeros((HEIGHT, WIDTH), bool)
  np.testing.assert_array_equal(weighting.spatial_weights(features, empty), 0)
  np.testing.assert_allclose(
    weighting.channel_weights(features, empty), np.log(CHANNELS), rtol=1e-6
  )


def test_vmap_over_padded_batch_equals_cropped_images():
  rng = np.random.default_rng(4)
  batch = np.stack([sparse_features(rng) for _ in range(3)])
  valid = np.stack([padded_mask(rng) for _ in range(3)])
  batch[~valid] = rng.random((np.sum(~valid), CHANNELS))  # padding garbage
  alphas = jax.jit(jax.vmap(weighting.spatial_weights))(batch, valid)
  betas = jax.jit(jax.vmap(weighting.channel_weights))(batch, valid)
  for i in range(3):
    rows, cols = valid[i].any(1).sum(), valid[i].any(0).sum()
    crop = batch[i, :rows, :cols]
    np.testing.assert_allclose(
      alphas[i, :rows, :cols], weighting.spatial_weights(crop), rtol=1e-5
    )
    np.testing.assert_array_equal(alphas[i][~valid[i]], 0.0)
    np.testing.assert_allclose(
      betas[i], weighting.channel_weights(crop), rtol=1e-5
    )


def test_bad_inputs_raise():
  features = np.zeros((HEIGHT, WIDTH, CHANNELS), np.float32)
  with pytest.raises(ValueError):
    weighting.spatial_weights(features[0])
  with pytest.raises(ValueError):
    weighting.channel_weights(features[None])
  with pytest.raises(TypeError):
    weighting.spatial_weights(features.astype(np.int32))
  with pytest.raises(TypeError):
    weighting.channel_weights(features, np.ones((HEIGHT, WIDTH), np.float32))
  with pytest.raises(ValueError):
    weighting.spatial_weights(features, np.ones((HEIGHT, WIDTH + 1), bool))
