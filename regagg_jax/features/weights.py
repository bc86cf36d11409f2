"""Convert the pretrained VGG19 weights to Flax variables; orbax save/restore.

The Keras h5 (`weight_sources` obtains and verifies it) holds Caffe's VGG19
weights, the ones the paper used (BGR input, ImageNet mean subtracted, 0..255
scale: Keras' `vgg19.preprocess_input` uses mode='caffe'), with (3, 3, C_in,
C) cross-correlation kernels, the layout of `flax.linen.Conv`.

The conversion runs once and is cached as an orbax checkpoint,
CHECKPOINT_NAME in `weight_sources.cache_dir()`. It is written to a temporary
directory and renamed, so concurrent processes never see half a checkpoint,
with the hash of its arrays (HASH_FILE); every load checks it and reconverts
a damaged cache from the verified h5.
"""

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

from absl import logging
import h5py
import jax
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from regagg_jax.features import vgg19
from regagg_jax.features import weight_sources

CHECKPOINT_NAME = 'vgg19_flax'

TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
"""torchvision's input normalisation, (rgb / 255 - mean) / std."""


def convert_h5(path: str | os.PathLike) -> dict:
  """Keras VGG19 h5 -> {'params': {'conv1_1': {'kernel', 'bias'}, ...}}.

  Keras layer blockB_convI becomes convB_I; kernels are already
  (3, 3, C_in, C) cross-correlation filters for BGR Caffe input.
  """
  params = {}
  with h5py.File(path, 'r') as file:
    for name in tqdm.tqdm(
      vgg19.LAYER_NAMES, desc=f'converting {Path(path).name}'
    ):
      block, index = re.fullmatch(r'conv(\d)_(\d)', name).groups()
      group = file[f'block{block}_conv{index}']
      kernel_name, bias_name = (n.decode() for n in group.attrs['weight_names'])
      params[name] = {
        'kernel': np.asarray(group[kernel_name], np.float32),
        'bias': np.asarray(group[bias_name], np.float32),
      }
  return {'params': params}


def convert_torchvision(path: str | os.PathLike) -> dict:
  """torchvision vgg19 state dict (.pth) -> Caffe-input Flax variables.

  torchvision's network takes (rgb / 255 - mean) / std; its conv1_1 is folded
  so that it takes `vgg19.preprocess` output (BGR, Caffe mean subtracted):
  kernel channels are reversed and divided by 255 * std, and the mean
  difference is moved into the bias. This is exact except on the 1-pixel
  image border, where zero padding now stands for the Caffe mean instead of
  torchvision's (at most 0.5 grey levels apart).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise weight_sources.WeightsError(
      f'{path}: reading a .pth state dict needs PyTorch '
      '(pip install torch); the Keras .h5 needs no torch'
    ) from error
  state = torch.load(path, map_location='cpu', weights_only=True)
  keys = sorted(
    (
      k
      for k in state
      if re.fullmatch(r'features\.\d+\.weight', k) and state[k].ndim == 4
    ),
    key=lambda k: int(k.split('.')[1]),
  )
  if len(keys) != len(vgg19.LAYER_NAMES):
    raise weight_sources.WeightsError(
      f'{path}: expected {len(vgg19.LAYER_NAMES)} conv '
      f'weights features.N.weight, found {len(keys)}'
    )
  params = {}
  for name, key in zip(vgg19.LAYER_NAMES, keys):
    kernel = state[key].detach().double().numpy().transpose(2, 3, 1, 0)
    bias = state[key.replace('weight', 'bias')].detach().double().numpy()
    params[name] = {'kernel': kernel, 'bias': bias}
  first = params['conv1_1']
  scale = 255.0 * np.asarray(TORCHVISION_STD_RGB)
  shift = (
    np.asarray(vgg19.CAFFE_MEAN_BGR[::-1])
    - 255.0 * np.asarray(TORCHVISION_MEAN_RGB)
  ) / scale
  first['bias'] = first['bias'] + np.einsum('hwck,c->k', first['kernel'], shift)
  first['kernel'] = (first['kernel'] / scale[:, None])[:, :, ::-1]
  return {
    'params': jax.tree_util.tree_map(
      lambda a: np.ascontiguousarray(a, np.float32), params
    )
  }


HASH_FILE = 'params.sha256'
"""File in a `save_params` directory: `hash_params` of what was saved."""


def hash_params(variables: dict) -> str:
  """SHA-256 of every leaf's path, dtype, shape and bytes (sorted paths)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for key, leaf in sorted(leaves, key=lambda item: str(item[0])):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f'{key} {leaf.dtype} {leaf.shape}'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def save_params(variables: dict, directory: str | os.PathLike) -> Path:
  """Saves variables with orbax into `directory`, atomically (temp + rename),
  with their `hash_params` in HASH_FILE.

  If another process finished the same directory first, its copy is kept.
  """
  directory = Path(directory).absolute()
  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = directory.with_name(f'.{directory.name}.{uuid.uuid4().hex}')
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging, variables)
    checkpointer.wait_until_finished()
    (staging / HASH_FILE).write_text(hash_params(variables) + '\n')
    os.rename(staging, directory)
  except OSError:
    if not directory.is_dir():
      raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return directory


def restore_params(directory: str | os.PathLike) -> dict:
  """Restores variables saved by `save_params`, as device arrays."""
  variables = ocp.StandardCheckpointer().restore(Path(directory).absolute())
  return jax.tree_util.tree_map(jax.numpy.asarray, variables)


def load_params(path: str | os.PathLike | None = None) -> dict:
  """The pretrained VGG19 variables, fetched / verified / converted once.

  Args:
    path: None for the cached conversion (made on first use from the sources
      in the module docstring); a Keras .h5 (verified, then converted and
      cached); a torchvision .pth (converted, not cached); or a directory
      written by `save_params`.

  Returns:
    {'params': {'conv1_1': {'kernel': float32 (3, 3, C_in, C), 'bias':
    float32 (C,)}, ..., 'conv5_4': ...}} on the default device.
  """
  if path is not None and Path(path).is_dir():
    return restore_params(path)
  if path is not None and Path(path).suffix == '.pth':
    return jax.tree_util.tree_map(jax.numpy.asarray, convert_torchvision(path))
  checkpoint = weight_sources.cache_dir() / CHECKPOINT_NAME
  if path is not None:
    weight_sources.verify(path)
  if not checkpoint.is_dir():
    h5 = Path(path) if path is not None else weight_sources.obtain_h5()
    logging.info('Converting %s to %s (once)', h5, checkpoint)
    save_params(convert_h5(h5), checkpoint)
  return _verified(checkpoint, path)


def _verified(checkpoint: Path, path) -> dict:
  """The cached conversion, checked against its HASH_FILE; a damaged or
  unhashed cache is reconverted from the verified h5 (or refused)."""
  expected = checkpoint / HASH_FILE
  try:
    variables = restore_params(checkpoint)
    found = hash_params(variables)
  except Exception as error:  # orbax raises many kinds on damaged files
    variables, found = None, f'unreadable ({type(error).__name__}: {error})'
  if expected.is_file() and expected.read_text().strip() == found:
    return variables
  try:
    h5 = Path(path) if path is not None else weight_sources.obtain_h5()
  except weight_sources.WeightsError as error:
    raise weight_sources.WeightsError(
      f'{checkpoint}: the converted weights do not match their hash '
      f'({found}) and no verified h5 is at hand to reconvert them ({error}).'
      f' Delete {checkpoint} and run python weights/convert.py --h5 '
      f'<{weight_sources.H5_NAME}>'
    ) from error
  converted = convert_h5(h5)
  if found == hash_params(converted):  # written before hashes: add one
    _write_atomically(expected, found + '\n')
    return variables
  logging.warning(
    '%s: converted weights damaged (hash %s); reconverting %s',
    checkpoint,
    found,
    h5,
  )
  trash = checkpoint.with_name(f'.{checkpoint.name}.damaged-{uuid.uuid4().hex}')
  os.rename(checkpoint, trash)
  shutil.rmtree(trash, ignore_errors=True)
  save_params(converted, checkpoint)
  return restore_params(checkpoint)


def _write_atomically(path: Path, text: str) -> None:
  staging = path.with_name(f'.{path.name}.{uuid.uuid4().hex}')
  staging.write_text(text)
  os.replace(staging, path)
