"""Tests for regagg_jax.features.vgg19 against an independent numpy float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.features import images
from regagg_jax.features import vgg19

TINY_WIDTHS = (4, 6, 8, 8, 8)


def _reference_conv_relu(x, kernel, bias):
  """float64 3x3 SAME cross-correlation + bias + ReLU, by kernel taps."""
  batch, height, width, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((batch, height, width, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy : dy + height, dx : dx + width] @ kernel[dy, dx]
  return np.maximum(out + bias, 0.0)


def _reference_pool(x):
  """float64 2x2/2 max-pooling, ceil rounding: windows clipped at the edge."""
  batch, height, width, channels = x.shape
  out = np.empty((batch, -(-height // 2), -(-width // 2), channels))
  for row in range(out.shape[1]):
    for col in range(out.shape[2]):
      window = x[:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
      out[:, row, col] = window.max(axis=(1, 2))
  return out


def _reference_features(params, x):
  """The whole network in float64 numpy, block by block."""
  out = np.asarray(x, np.float64)
  for block, count in enumerate(vgg19.CONVS_PER_BLOCK, start=1):
    if block > 1:
      out = _reference_pool(out)
    for index in range(1, count + 1):
      layer = params[f'conv{block}_{index}']
      out = _reference_conv_relu(
        out,
        np.asarray(layer['kernel'], np.float64),
        np.asarray(layer['bias'], np.float64),
      )
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
    f'max error {error.max():.3g}, max |ref| {np.abs(reference).max():.3g}'
  )


@pytest.fixture(scope='module')
def tiny_params():
  return vgg19.init_params(jax.random.PRNGKey(0), widths=TINY_WIDTHS)


def test_init_params_names_and_shapes(tiny_params):
  params = tiny_params['params']
  assert set(params) == set(vgg19.LAYER_NAMES)
  assert len(vgg19.LAYER_NAMES) == 16
  assert params['conv1_1']['kernel'].shape == (3, 3, 3, 4)
  assert params['conv5_4']['kernel'].shape == (3, 3, 8, 8)
  assert params['conv5_4']['bias'].shape == (8,)


def test_pool_ceil_matches_reference():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  pooled = jax.jit(vgg19.pool_ceil)(x)
  assert pooled.shape == (2, 3, 4, 3)
  np.testing.assert_array_equal(pooled, _reference_pool(x).astype(np.float32))


@pytest.mark.parametrize('transpose', [None, False, True])
@pytest.mark.parametrize(
  'shape', [(2, 37, 45, 3), (1, 17, 33, 3), (1, 48, 32, 3)]
)
def test_features_match_reference_random_weights(tiny_params, shape, transpose):
  rng = np.random.default_rng(1)
  # Biases are zero at init; make them non-zero so they are checked too.
  params = jax.tree_util.tree_map(
    lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), tiny_params
  )
  x = rng.normal(scale=50.0, size=shape).astype(np.float32)
  out = vgg19.features(params, jnp.asarray(x), transpose=transpose)
  assert out.dtype == jnp.float32
  assert out.shape == (shape[0],) + images.feature_shape(*shape[1:3]) + (8,)
  _assert_close(out, _reference_features(params['params'], x))


def test_preprocess_is_caffe():
  rgb = np.random.default_rng(2).integers(0, 256, (2, 5, 6, 3), np.uint8)
  x = jax.jit(vgg19.preprocess)(rgb)
  assert x.dtype == jnp.float32 and x.shape == rgb.shape
  expected = rgb[..., ::-1].astype(np.float64) - np.array(
    [103.939, 116.779, 123.68]
  )
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
    vgg19.features(tiny_params['params'], jnp.zeros((1, 16, 16, 3)))


def test_features_compile_once_per_shape(tiny_params):
  compiled = vgg19._apply  # pylint: disable=protected-access
  before = compiled._cache_size()  # pylint: disable=protected-access
  for seed in range(3):
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, 40, 56, 3))
    vgg19.features(tiny_params, x).block_until_ready()
  assert compiled._cache_size() == before + 1  # pylint: disable=protected-access


def test_bfloat16_close_to_float32(tiny_params):
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 40, 56, 3)) * 50.0
  full = vgg19.features(tiny_params, x)
  half = vgg19.features(tiny_params, x, dtype=jnp.bfloat16)
  assert half.dtype == jnp.float32 and half.shape == full.shape
  # bfloat16 keeps 8 significant bits; over 16 layers of 4-8 channels (few
  # terms to average rounding out) the relative L2 error is ~7 %.
  error = float(jnp.linalg.norm(half - full) / jnp.linalg.norm(full))
  assert error <= 0.1
  assert float(jnp.abs(half - full).max()) <= 0.1 * float(full.max())


@pytest.mark.parametrize('transpose', [False, True])
def test_padded_batch_with_sizes_equals_unpadded(tiny_params, transpose):
  """Mask invariance: padding + sizes changes nothing inside each image."""
  rng = np.random.default_rng(4)
  shapes = [(37, 45), (50, 29), (64, 64)]
  rgbs = [rng.integers(0, 256, shape + (3,), np.uint8) for shape in shapes]
  batch, valid = images.pad_batch(rgbs, height=64, width=64)
  sizes = np.array(shapes, np.int32)
  padded = np.asarray(
    vgg19.features(
      tiny_params, vgg19.preprocess(batch), sizes, transpose=transpose
    )
  )
  for index, rgb in enumerate(rgbs):
    alone = np.asarray(vgg19.features(tiny_params, vgg19.preprocess(rgb[None])))
    height, width = alone.shape[1:3]
    assert valid[index].sum() == height * width
    _assert_close(
      padded[index, :height, :width], alone[0].astype(np.float64), rtol=1e-5
    )
    assert not padded[index][~valid[index]].any()
  with pytest.raises(ValueError):
    vgg19.features(tiny_params, vgg19.preprocess(batch), sizes[:2])
  with pytest.raises(TypeError):
    vgg19.features(tiny_params, vgg19.preprocess(batch), sizes * 1.0)


def _crop(path, size):
  image = images.load_image(path)
  top = (image.shape[0] - size) // 2
  left = (image.shape[1] - size) // 2
  return image[top : top + size, left : left + size]


@pytest.mark.weights
def test_real_weights_match_reference_on_64_crop(real_params, sample_paths):
  rgb = _crop(sample_paths[0], 64)[None]
  x = vgg19.preprocess(rgb)
  out = vgg19.features(real_params, x)
  assert out.shape == (1, 4, 4, 512)
  reference = _reference_features(real_params['params'], np.asarray(x))
  _assert_close(out, reference)
  assert (reference > 0).any()


@pytest.mark.weights
@pytest.mark.parametrize('index', [0, 12, 24, 48])
def test_real_photo_features_sparse_and_finite(
  real_params, sample_paths, index
):
  rgb = images.load_image(sample_paths[index])
  out = np.asarray(vgg19.features(real_params, vgg19.preprocess(rgb[None])))
  assert out.shape == (1,) + images.feature_shape(*rgb.shape[:2]) + (512,)
  assert np.isfinite(out).all() and (out >= 0).all()
  assert 0.05 <= (out > 0).mean() <= 0.20


@pytest.mark.weights
@pytest.mark.parametrize('crop', [(288, 384), (250, 300)])
def test_padding_deviation_real_weights(
  real_params, sample_paths, crop, record_property
):
  """Measures padded-vs-unpadded features inside the valid cells.

  Plain padding (mean pixel, no sizes) moves features near the image's
  bottom / right edge; with sizes the valid cells are reproduced.
  """
  rgb = images.load_image(sample_paths[4])[: crop[0], : crop[1]]
  alone = np.asarray(vgg19.features(real_params, vgg19.preprocess(rgb[None])))[
    0
  ]
  height, width = images.bucket_shape(*crop)
  batch, valid = images.pad_batch([rgb], height=height + 64, width=width)
  x = vgg19.preprocess(batch)
  plain = np.asarray(vgg19.features(real_params, x))[0][valid[0]]
  masked = np.asarray(vgg19.features(real_params, x, np.array([crop])))[0]
  masked = masked[valid[0]]
  alone = alone.reshape(-1, alone.shape[-1])
  scale = np.abs(alone).max()
  cell_error = np.linalg.norm(plain - alone, axis=-1) / np.maximum(
    np.linalg.norm(alone, axis=-1), 1e-12 * scale
  )
  figures = {
    'plain_max_abs_over_max': float(np.abs(plain - alone).max() / scale),
    'plain_median_cell_rel_l2': float(np.median(cell_error)),
    'masked_max_abs_over_max': float(np.abs(masked - alone).max() / scale),
  }
  for name, value in figures.items():
    record_property(name, value)
  print(f'padding {crop} -> {batch.shape[1:3]}: {figures}')
  assert figures['masked_max_abs_over_max'] <= 1e-5
  assert figures['plain_max_abs_over_max'] > 1e-3  # the effect being fixed
