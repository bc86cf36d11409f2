"""Tests for regagg_jax.vgg19 against an independent numpy float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax import images
from regagg_jax import vgg19

TINY_WIDTHS = (4, 6, 8, 8, 8)


def _reference_conv_relu(x, kernel, bias):
  """float64 3x3 SAME cross-correlation + bias + ReLU, by kernel taps."""
  batch, height, width, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((batch, height, width, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + height, dx:dx + width] @ kernel[dy, dx]
  return np.maximum(out + bias, 0.0)


def _reference_pool(x):
  """float64 2x2/2 max-pooling, ceil rounding: windows clipped at the edge."""
  batch, height, width, channels = x.shape
  out = np.empty((batch, -(-height // 2), -(-width // 2), channels))
  for row in range(out.shape[1]):
    for col in range(out.shape[2]):
      window = x[:, 2 * row:2 * row + 2, 2 * col:2 * col + 2]
      out[:, row, col] = window.max(axis=(1, 2))
  return out


def _reference_features(params, x):
  """The whole network in float64 numpy, block by block."""
  out = np.asarray(x, np.float64)
  for block, count in enumerate(vgg19.CONVS_PER_BLOCK, start=1):
    if block > 1:
      out = _reference_pool(out)
    for index in range(1, count + 1):
      layer = params[f"conv{block}_{index}"]
      out = _reference_conv_relu(out, np.asarray(layer["kernel"], np.float64),
                                 np.asarray(layer["bias"], np.float64))
  return out


def _assert_close(actual, reference, *, rtol=1e-4):
  """|a - b| <= rtol * (|b| + max|b|): relative, floored at rtol * max|b|.

  float32 convolutions cannot be relative-exact on elements that cancel to
  ~0 (or that a ReLU clips), so their error is measured against the largest
  activation of the map instead.
  """
  actual = np.asarray(actual, np.float64)
  error = np.abs(actual - reference)
  bound = rtol * (np.abs(reference) + np.abs(reference).max())
  assert (error <= bound).all(), (
      f"max error {error.max():.3g}, max |ref| {np.abs(reference).max():.3g}")


@pytest.fixture(scope="module")
def tiny_params():
  return vgg19.init_params(jax.random.PRNGKey(0), widths=TINY_WIDTHS)


def test_init_params_names_and_shapes(tiny_params):
  params = tiny_params["params"]
  assert set(params) == set(vgg19.LAYER_NAMES)
  assert len(vgg19.LAYER_NAMES) == 16
  assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 4)
  assert params["conv5_4"]["kernel"].shape == (3, 3, 8, 8)
  assert params["conv5_4"]["bias"].shape == (8,)


def test_pool_ceil_matches_reference():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  pooled = jax.jit(vgg19.pool_ceil)(x)
  assert pooled.shape == (2, 3, 4, 3)
  np.testing.assert_array_equal(pooled, _reference_pool(x).astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 37, 45, 3), (1, 17, 33, 3),
                                   (1, 48, 32, 3)])
def test_features_match_reference_random_weights(tiny_params, shape):
  rng = np.random.default_rng(1)
  # Biases are zero at init; make them non-zero so they are checked too.
  params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32),
      tiny_params)
  x = rng.normal(scale=50.0, size=shape).astype(np.float32)
  out = vgg19.features(params, jnp.asarray(x))
  assert out.dtype == jnp.float32
  assert out.shape == (shape[0],) + images.feature_shape(*shape[1:3]) + (8,)
  _assert_close(out, _reference_features(params["params"], x))


def test_preprocess_is_caffe():
  rgb = np.random.default_rng(2).integers(0, 256, (2, 5, 6, 3), np.uint8)
  x = jax.jit(vgg19.preprocess)(rgb)
  assert x.dtype == jnp.float32 and x.shape == rgb.shape
  expected = rgb[..., ::-1].astype(np.float64) - np.array(
      [103.939, 116.779, 123.68])
  np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
  with pytest.raises(TypeError):
    vgg19.preprocess(rgb.astype(np.float32))
  with pytest.raises(ValueError):
    vgg19.preprocess(rgb[0])


def test_features_input_checks(tiny_params):
  with pytest.raises(ValueError):
    vgg19.features(tiny_params, jnp.zeros((16, 16, 3)))
  with pytest.raises(ValueError):
    vgg19.features(tiny_params, jnp.zeros((1, 16, 16, 4)))
  with pytest.raises(TypeError):
    vgg19.features(tiny_params, jnp.zeros((1, 16, 16, 3), jnp.int32))
  with pytest.raises(TypeError):
    vgg19.features(tiny_params["params"], jnp.zeros((1, 16, 16, 3)))


def test_features_compile_once_per_shape(tiny_params):
  before = vgg19._apply._cache_size()  # pylint: disable=protected-access
  for seed in range(3):
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, 40, 56, 3))
    vgg19.features(tiny_params, x).block_until_ready()
  assert vgg19._apply._cache_size() == before + 1  # pylint: disable=protected-access


def test_bfloat16_close_to_float32(tiny_params):
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 40, 56, 3)) * 50.0
  full = vgg19.features(tiny_params, x)
  half = vgg19.features(tiny_params, x, dtype=jnp.bfloat16)
  assert half.dtype == jnp.float32 and half.shape == full.shape
  assert float(jnp.abs(half - full).max()) <= 0.05 * float(full.max())
