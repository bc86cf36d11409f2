"""Tests of regagg_jax.aggregation.pooling against float64 numpy references (eq. 3-5, 9)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from regagg_jax.aggregation import pca
from regagg_jax.aggregation import pooling
from regagg_jax.features import weighting

HEIGHT, WIDTH, CHANNELS = 7, 9, 64


def sparse_features(rng, height=HEIGHT, width=WIDTH, channels=CHANNELS):
  """Non-negative conv5-like activations, 30 % non-zero."""
  values = rng.gamma(1.5, 2.0, size=(height, width, channels))
  return (values * (rng.random(values.shape) < 0.3)).astype(np.float32)


def random_masks(rng, num_regions=8, height=HEIGHT, width=WIDTH):
  """Random masks; slot 0 empty, slot 1 a single cell, last the full map."""
  masks = rng.random((num_regions, height, width)) < 0.4
  masks[0] = False
  masks[1] = False
  masks[1, 2, 3] = True
  masks[-1] = True
  return masks


def reference_first_order(features, masks, beta, alpha=None):
  """eq. (3) / eq. (9) in float64, loops over cells."""
  out = np.zeros((masks.shape[0], features.shape[-1]))
  for m in range(masks.shape[0]):
    for y, x in zip(*np.nonzero(masks[m])):
      weight = 1.0 if alpha is None else float(alpha[y, x])
      out[m] += weight * features[y, x].astype(np.float64)
    out[m] *= beta
    norm = np.linalg.norm(out[m])
    out[m] = out[m] / norm if norm > 0 else out[m]
  return out


def reference_log_moment(features, mask, alpha, beta, components, eps_rel):
  """eq. (4)-(5) in float64 with scipy logm; None for zero mass or trace."""
  reduced = components.shape[1]
  moment, mass = np.zeros((reduced, reduced)), 0.0
  for y, x in zip(*np.nonzero(mask)):
    local = components.T @ (beta * features[y, x].astype(np.float64))
    moment += alpha[y, x] * np.outer(local, local)
    mass += alpha[y, x]
  if mass == 0 or np.trace(moment) == 0:
    return None
  moment /= mass
  regularised = moment + eps_rel * np.trace(moment) / reduced * np.eye(reduced)
  with warnings.catch_warnings():  # logm warns at its ~1e-13 error estimate
    warnings.simplefilter('ignore', RuntimeWarning)
    log_moment = scipy.linalg.logm(regularised).real
  values, vectors = np.linalg.eigh(regularised)  # float64 cross-check
  np.testing.assert_allclose(
    log_moment, (vectors * np.log(values)) @ vectors.T, atol=1e-8
  )
  return log_moment


def reference_second_order(
  features, masks, alpha, beta, components, eps_rel=1e-3, offdiag_scale=1.0
):
  reduced = components.shape[1]
  rows, cols = np.triu_indices(reduced)
  out = np.zeros((masks.shape[0], reduced * (reduced + 1) // 2))
  for m in range(masks.shape[0]):
    log_moment = reference_log_moment(
      features, masks[m], alpha, beta, components, eps_rel
    )
    if log_moment is None:
      continue
    vec = log_moment[rows, cols] * np.where(rows == cols, 1.0, offdiag_scale)
    out[m] = vec / np.linalg.norm(vec)
  return out


def weights_of(features, valid=None):
  alpha = np.asarray(weighting.spatial_weights(features, valid), np.float64)
  beta = np.asarray(weighting.channel_weights(features, valid), np.float64)
  return alpha, beta


def reduction(rng, features, beta, dim):
  """U^1 of eq. (4): PCA of first-order descriptors of random regions."""
  regions = rng.random((4 * dim, *features.shape[:2])) < 0.3
  descriptors = pooling.first_order(features, regions, beta.astype(np.float32))
  return pca.fit(np.asarray(descriptors), dim, center=False)


def test_first_order_matches_eq3_and_eq9():
  rng = np.random.default_rng(0)
  features = sparse_features(rng)
  masks = random_masks(rng)
  alpha, beta = weights_of(features)
  fn = jax.jit(pooling.first_order)
  got = fn(features, masks, beta.astype(np.float32))
  assert got.shape == (8, CHANNELS) and got.dtype == jnp.float32
  np.testing.assert_allclose(
    got, reference_first_order(features, masks, beta), atol=1e-6
  )
  got = fn(features, masks, beta.astype(np.float32), alpha.astype(np.float32))
  np.testing.assert_allclose(
    got, reference_first_order(features, masks, beta, alpha), atol=1e-6
  )
  np.testing.assert_array_equal(got[0], 0.0)  # empty region


@pytest.mark.parametrize('offdiag_scale', [1.0, math.sqrt(2.0)])
def test_second_order_matches_eq4_eq5(offdiag_scale):
  rng = np.random.default_rng(1)
  features = sparse_features(rng)
  features[..., :6] = 0.0  # channels that never fire
  masks = random_masks(rng)
  alpha, beta = weights_of(features)
  params = reduction(rng, features, beta, 16)
  fn = jax.jit(lambda *a: pooling.second_order(*a, offdiag_scale=offdiag_scale))
  got = fn(
    features, masks, alpha.astype(np.float32), beta.astype(np.float32), params
  )
  assert got.shape == (8, 16 * 17 // 2) and got.dtype == jnp.float32
  expected = reference_second_order(
    features,
    masks,
    alpha,
    beta,
    np.asarray(params.components, np.float64),
    offdiag_scale=offdiag_scale,
  )
  np.testing.assert_allclose(got, expected, atol=2e-5)
  np.testing.assert_array_equal(got[0], 0.0)
  np.testing.assert_allclose(np.linalg.norm(got[1:], axis=1), 1.0, rtol=1e-5)


def graded_features(rng, height, width):
  """Activations whose K'=128 second moment has a graded, near-singular
  spectrum (latent scales 1 .. 1e-3) and per-cell gains, like VGG19 conv5."""
  latent = rng.normal(size=(height, width, 96)) * np.geomspace(1, 1e-3, 96)
  gain = rng.gamma(2.0, size=(height, width, 1))
  return (
    np.maximum(latent @ rng.normal(size=(96, 256)) - 0.05, 0.0) * gain
  ).astype(np.float32)


@pytest.mark.parametrize('method,tolerance', [('qr', 2e-5), ('eigh', 2e-5)])
@pytest.mark.parametrize('height,width', [(HEIGHT, WIDTH), (16, 16)])
def test_log_covariance_error_near_singular_k128(
  height, width, method, tolerance
):
  """Relative Frobenius error vs float64 logm at K'=128.

  7x9 maps have fewer cells than K' (rank-deficient G); on 16x16 maps regions
  of 140-256 cells have a full-rank G with eigenvalues down to ~1e-8 tr(G),
  where a float32 eigh of G alone measured 5e-4 to 8e-4 ('qr' stays near
  1e-6; 'eigh' with its first-order correction must meet the same 2e-5).
  """
  rng = np.random.default_rng(2)
  features = graded_features(rng, height, width)
  alpha, beta = weights_of(features)
  params = reduction(rng, features, beta, 128)
  masks = np.zeros((6, height, width), bool)
  masks[0, 3, 4] = True  # one cell: rank 1
  masks[1, 0, :2] = True
  masks[2, 2:4, 1:4] = True
  masks[3] = rng.random((height, width)) < 0.6
  masks[4, : height - 1, : width - 2] = True
  masks[5] = True
  local = (features * beta.astype(np.float32)) @ params.components
  got = jax.jit(pooling.compute_log_covariances, static_argnames='method')(
    local, jnp.asarray(masks * alpha, jnp.float32), method=method
  )
  errors = []
  for m in range(6):
    expected = reference_log_moment(
      features,
      masks[m],
      alpha,
      beta,
      np.asarray(params.components, np.float64),
      1e-3,
    )
    errors.append(np.linalg.norm(got[m] - expected) / np.linalg.norm(expected))
  assert max(errors) <= tolerance, errors


def test_black_image_one_cell_and_zero_alpha_mass_are_finite():
  rng = np.random.default_rng(3)
  params = pca.PCAParams(
    jnp.zeros(CHANNELS), jnp.eye(CHANNELS)[:, :8], jnp.ones(8)
  )
  fn = jax.jit(pooling.second_order)
  black = np.zeros((HEIGHT, WIDTH, CHANNELS), np.float32)
  masks = random_masks(rng)
  alpha = weighting.spatial_weights(black)
  beta = weighting.channel_weights(black)
  np.testing.assert_array_equal(fn(black, masks, alpha, beta, params), 0.0)
  np.testing.assert_array_equal(
    pooling.first_order(black, masks, beta, alpha), 0.0
  )
  features = sparse_features(rng)
  beta = weighting.channel_weights(features)
  zero_alpha = fn(features, masks, jnp.zeros((HEIGHT, WIDTH)), beta, params)
  np.testing.assert_array_equal(zero_alpha, 0.0)  # sum of alpha over R = 0
  one_cell = fn(
    features, masks[1:2], weighting.spatial_weights(features), beta, params
  )
  assert np.all(np.isfinite(one_cell))
  np.testing.assert_allclose(np.linalg.norm(one_cell), 1.0, rtol=1e-5)


def padded_batch(rng, size=3):
  """Images padded to (HEIGHT, WIDTH) with garbage in the padding."""
  features = np.stack([sparse_features(rng) for _ in range(size)])
  valid = np.zeros((size, HEIGHT, WIDTH), bool)
  shapes = [(HEIGHT, WIDTH), (5, 6), (4, WIDTH)][:size]
  for i, (rows, cols) in enumerate(shapes):
    valid[i, :rows, :cols] = True
  features[~valid] = 50.0 * rng.random((np.sum(~valid), CHANNELS))
  return features, valid, shapes


def test_vmap_masks_padding_regions_and_cells():
  rng = np.random.default_rng(4)
  features, valid, shapes = padded_batch(rng)
  masks = np.stack([random_masks(rng) for _ in shapes])
  region_valid = np.ones((3, 8), bool)
  region_valid[:, 5] = False  # padded region slot
  params = reduction(rng, features[0], weights_of(features[0])[1], 8)

  def encode(f, m, v, rv):
    alpha = weighting.spatial_weights(f, v)
    beta = weighting.channel_weights(f, v)
    return (
      pooling.first_order(f, m, beta, alpha, valid=v, region_valid=rv),
      pooling.second_order(f, m, alpha, beta, params, valid=v, region_valid=rv),
    )

  first, second = jax.jit(jax.vmap(encode))(
    features, masks, valid, region_valid
  )
  for i, (rows, cols) in enumerate(shapes):
    crop = features[i, :rows, :cols]
    kept = np.delete(masks[i, :, :rows, :cols], 5, axis=0)
    alpha, beta = weights_of(crop)
    np.testing.assert_allclose(
      np.delete(first[i], 5, axis=0),
      reference_first_order(crop, kept, beta, alpha),
      atol=1e-6,
    )
    np.testing.assert_allclose(
      np.delete(second[i], 5, axis=0),
      reference_second_order(
        crop, kept, alpha, beta, np.asarray(params.components, np.float64)
      ),
      atol=2e-5,
    )
    np.testing.assert_array_equal(first[i, 5], 0.0)
    np.testing.assert_array_equal(second[i, 5], 0.0)


def test_bad_inputs_raise():
  rng = np.random.default_rng(8)
  features = sparse_features(rng)
  masks = random_masks(rng)
  beta = np.ones(CHANNELS, np.float32)
  alpha = np.ones((HEIGHT, WIDTH), np.float32)
  params = pca.PCAParams(
    jnp.zeros(CHANNELS), jnp.eye(CHANNELS)[:, :4], jnp.ones(4)
  )
  with pytest.raises(TypeError):
    pooling.first_order(features, masks.astype(np.float32), beta)
  with pytest.raises(ValueError):
    pooling.first_order(features, masks[0], beta)
  with pytest.raises(ValueError):
    pooling.first_order(features, masks[:, :-1], beta)
  with pytest.raises(ValueError):
    pooling.first_order(features, masks, beta[:-1])
  with pytest.raises(TypeError):
    pooling.first_order(features, masks, beta.astype(np.int32))
  with pytest.raises(ValueError):
    pooling.first_order(features, masks, beta, alpha[:-1])
  with pytest.raises(ValueError):
    pooling.first_order(features, masks, beta, region_valid=np.ones(3, bool))
  with pytest.raises(ValueError):
    pooling.second_order(features[None], masks, alpha, beta, params)
  with pytest.raises(ValueError):
    pooling.second_order(
      features, masks, alpha, beta, params._replace(components=jnp.eye(4))
    )


def test_same_shape_images_compile_once():
  rng = np.random.default_rng(9)
  params = pca.PCAParams(
    jnp.zeros(CHANNELS), jnp.eye(CHANNELS)[:, :8], jnp.ones(8)
  )
  traces = []

  @jax.jit
  def encode(features, masks, valid, region_valid):
    traces.append(features.shape)
    alpha = weighting.spatial_weights(features, valid)
    beta = weighting.channel_weights(features, valid)
    return pooling.second_order(
      features,
      masks,
      alpha,
      beta,
      params,
      valid=valid,
      region_valid=region_valid,
    )

  features, valid, _ = padded_batch(rng)
  for i in range(3):
    encode(features[i], random_masks(rng), valid[i], rng.random(8) < 0.8)
  assert len(traces) == 1
