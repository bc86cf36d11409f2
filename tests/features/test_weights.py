"""Tests for regagg_jax.features.weights: conversion, orbax I/O, the hashed
cache (sources: test_weight_sources.py)."""

import sys

import h5py
import jax
import numpy as np
import pytest

from regagg_jax.features import vgg19
from regagg_jax.features import weight_sources
from regagg_jax.features import weights


def _assert_bit_equal(actual, expected):
  flat_actual = jax.tree_util.tree_leaves_with_path(actual)
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  assert [p for p, _ in flat_actual] == [p for p, _ in flat_expected]
  for (path, a), (_, b) in zip(flat_actual, flat_expected):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.float32, path
    np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_orbax_round_trip_is_bit_exact(tmp_path):
  variables = jax.tree_util.tree_map(
    np.asarray, vgg19.init_params(jax.random.PRNGKey(0), widths=(4, 6, 8, 8, 8))
  )
  directory = weights.save_params(variables, tmp_path / 'ckpt')
  _assert_bit_equal(weights.restore_params(directory), variables)
  _assert_bit_equal(weights.load_params(directory), variables)


def test_save_keeps_existing_checkpoint_and_leaves_no_staging(tmp_path):
  first = {'params': {'a': np.zeros(3, np.float32)}}
  second = {'params': {'a': np.ones(3, np.float32)}}
  weights.save_params(first, tmp_path / 'ckpt')
  weights.save_params(second, tmp_path / 'ckpt')  # lost the race: kept first
  _assert_bit_equal(weights.restore_params(tmp_path / 'ckpt'), first)
  assert [p.name for p in tmp_path.iterdir()] == ['ckpt']


@pytest.mark.weights
def test_conversion_matches_h5_and_round_trips(real_params, real_h5, tmp_path):
  with h5py.File(real_h5, 'r') as file:
    for block, count in enumerate(vgg19.CONVS_PER_BLOCK, start=1):
      for index in range(1, count + 1):
        group = file[f'block{block}_conv{index}']
        layer = real_params['params'][f'conv{block}_{index}']
        kernel = group[f'block{block}_conv{index}_W_1:0'][()]
        np.testing.assert_array_equal(layer['kernel'], kernel)
        np.testing.assert_array_equal(
          layer['bias'], group[f'block{block}_conv{index}_b_1:0']
        )
  assert real_params['params']['conv1_1']['kernel'].shape == (3, 3, 3, 64)
  assert real_params['params']['conv5_4']['kernel'].shape == (3, 3, 512, 512)
  directory = weights.save_params(weights.convert_h5(real_h5), tmp_path / 'c')
  _assert_bit_equal(weights.restore_params(directory), real_params)


@pytest.mark.parametrize('content', [b'', b'\x89HDF\r\n\x1a\n' + b'\0' * 999])
def test_wrong_or_truncated_file_names_file_and_hash(tmp_path, content):
  path = tmp_path / 'broken.h5'
  path.write_bytes(content)
  with pytest.raises(weight_sources.WeightsError) as error:
    weights.load_params(path)
  assert str(path) in str(error.value) and weight_sources.SHA256 in str(
    error.value
  )


@pytest.mark.weights
def test_corrupted_real_h5_raises(real_h5, tmp_path):
  data = bytearray(real_h5.read_bytes())
  data[len(data) // 2] ^= 0xFF
  corrupted = tmp_path / 'corrupted.h5'
  corrupted.write_bytes(bytes(data))
  with pytest.raises(weight_sources.WeightsError, match=weight_sources.SHA256):
    weights.load_params(corrupted)
  truncated = tmp_path / 'truncated.h5'
  truncated.write_bytes(bytes(data[: len(data) // 3]))
  with pytest.raises(weight_sources.WeightsError, match='truncated.h5'):
    weights.load_params(truncated)


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(
    weight_sources.WeightsError, match='vgg19.pth.*needs PyTorch'
  ):
    weights.load_params(tmp_path / 'vgg19.pth')


def _torchvision_state_dict(params, torch):
  """Caffe-input params -> a torchvision-convention vgg19 state dict.

  Inverse of the folding in convert_torchvision, derived separately:
  torchvision input channel c (RGB) is Caffe channel 2 - c scaled by
  1 / (255 std_c) and shifted by (mean_rgb_c - 255 m_c) / (255 std_c).
  """
  std = np.array(weights.TORCHVISION_STD_RGB)
  mean = np.array(weights.TORCHVISION_MEAN_RGB)
  caffe_mean_rgb = np.array(vgg19.CAFFE_MEAN_BGR)[::-1]
  indices = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
  state = {}
  for name, index in zip(vgg19.LAYER_NAMES, indices):
    kernel = np.asarray(params[name]['kernel'], np.float64)
    bias = np.asarray(params[name]['bias'], np.float64)
    if name == 'conv1_1':
      kernel = kernel[:, :, ::-1, :] * (255.0 * std)[:, None]
      shift = (caffe_mean_rgb - 255.0 * mean) / (255.0 * std)
      bias = bias - (kernel * shift[:, None]).sum(axis=(0, 1, 2))
    state[f'features.{index}.weight'] = torch.tensor(
      kernel.transpose(3, 2, 0, 1).astype(np.float32)
    )
    state[f'features.{index}.bias'] = torch.tensor(bias.astype(np.float32))
  state['classifier.0.weight'] = torch.zeros(4, 8)
  return state


def test_torchvision_pth(tmp_path):
  torch = pytest.importorskip('torch')
  variables = vgg19.init_params(jax.random.PRNGKey(1), widths=(4, 6, 8, 8, 8))
  variables = jax.tree_util.tree_map(
    lambda p: np.asarray(p) + 0.1, variables
  )  # non-zero biases
  path = tmp_path / 'vgg19.pth'
  torch.save(_torchvision_state_dict(variables['params'], torch), path)
  loaded = weights.load_params(path)
  for name in vgg19.LAYER_NAMES:
    for kind in ('kernel', 'bias'):
      actual = np.asarray(loaded['params'][name][kind])
      assert actual.dtype == np.float32
      np.testing.assert_allclose(
        actual, variables['params'][name][kind], rtol=1e-5, atol=1e-5
      )
  # The torchvision network on its own input equals ours on Caffe input,
  # away from the 1-pixel border (where zero padding differs by design).
  rgb = np.random.default_rng(0).integers(0, 256, (1, 20, 24, 3), np.uint8)
  state = torch.load(path, weights_only=True)
  torch_input = torch.tensor(
    rgb / 255.0 - weights.TORCHVISION_MEAN_RGB
  ) / torch.tensor(weights.TORCHVISION_STD_RGB)
  expected = (
    torch.nn.functional.conv2d(
      torch_input.permute(0, 3, 1, 2).double(),
      state['features.0.weight'].double(),
      state['features.0.bias'].double(),
      padding=1,
    )
    .permute(0, 2, 3, 1)
    .numpy()
  )
  conv = jax.lax.conv_general_dilated(
    vgg19.preprocess(rgb),
    loaded['params']['conv1_1']['kernel'],
    (1, 1),
    'SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  actual = np.asarray(conv + loaded['params']['conv1_1']['bias'])
  np.testing.assert_allclose(
    actual[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-3
  )


def _damaged_cache_copy(real_h5, tmp_path, monkeypatch):
  """A copy of the converted cache with 64 bytes flipped, as the cache."""
  import shutil

  checkpoint = weight_sources.cache_dir() / weights.CHECKPOINT_NAME
  weights.load_params()  # the real cache carries its hash from here on
  copy = tmp_path / weights.CHECKPOINT_NAME
  shutil.copytree(checkpoint, copy)
  largest = max(
    (p for p in copy.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size
  )
  data = bytearray(largest.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 64] = bytes(
    b ^ 0xFF for b in data[middle : middle + 64]
  )
  largest.write_bytes(bytes(data))
  monkeypatch.setenv('REGAGG_JAX_CACHE', str(tmp_path))
  return copy


@pytest.mark.slow
def test_damaged_weights_cache_is_reconverted_from_the_h5(
  real_h5, tmp_path, monkeypatch
):
  import shutil

  copy = _damaged_cache_copy(real_h5, tmp_path, monkeypatch)
  shutil.copy(real_h5, tmp_path / weight_sources.H5_NAME)
  variables = weights.load_params()
  _assert_bit_equal(variables, weights.convert_h5(real_h5))
  stored = (copy / weights.HASH_FILE).read_text().strip()
  assert stored == weights.hash_params(variables)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


@pytest.mark.slow
def test_damaged_weights_cache_without_h5_is_refused(
  real_h5, tmp_path, monkeypatch
):
  copy = _damaged_cache_copy(real_h5, tmp_path, monkeypatch)

  def unreachable():
    raise weight_sources.WeightsError('no source reachable')

  monkeypatch.setattr(weight_sources, 'obtain_h5', unreachable)
  with pytest.raises(weight_sources.WeightsError) as error:
    weights.load_params()
  assert str(copy) in str(error.value) and 'convert.py' in str(error.value)


def test_hash_params_sees_one_changed_value():
  variables = {'params': {'a': {'kernel': np.zeros((2, 3), np.float32)}}}
  before = weights.hash_params(variables)
  variables['params']['a']['kernel'][1, 2] = 1e-30
  assert weights.hash_params(variables) != before
