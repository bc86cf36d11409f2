"""VGG19 up to conv5_4 + ReLU in Flax, with Caffe preprocessing.

The paper (Sec. 5) takes its dense local descriptors F (H, W, K=512) from the
last convolutional layer of the Caffe VGG19 model. This module reproduces that
network: 16 3x3 convolutions (SAME padding, ReLU) in five blocks, 2x2/2
max-pooling between blocks with Caffe's ceil rounding (an odd side rounds up),
and no pooling after block 5, so an (H_I, W_I) image gives a
(ceil(H_I/16), ceil(W_I/16)) grid.

    from regagg_jax.features import vgg19
    from regagg_jax.features import weights
    variables = weights.load_params()    # fetch / verify / convert on first use
    x = vgg19.preprocess(rgb)            # uint8 (B, H_I, W_I, 3) RGB -> Caffe input
    f = vgg19.features(variables, x)     # float32 (B, H, W, 512), jitted
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WIDTHS = (64, 128, 256, 512, 512)
"""Output channels of the five blocks of VGG19."""

CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
"""Number of 3x3 convolutions in each block of VGG19."""

LAYER_NAMES = tuple(
  f'conv{block}_{index}'
  for block, count in enumerate(CONVS_PER_BLOCK, start=1)
  for index in range(1, count + 1)
)
"""Parameter names, conv1_1 .. conv5_4, in network order."""

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""ImageNet mean pixel that Caffe (and Keras' 'caffe' mode) subtracts, BGR."""


def pool_ceil(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 and Caffe's ceil rounding.

  An odd height or width is padded with -inf on the bottom / right, so the
  last row / column forms a window of its own instead of being dropped
  (Keras / 'VALID' pooling would drop it).

  Args:
    x: float (B, H, W, C) activations.

  Returns:
    float (B, ceil(H/2), ceil(W/2), C), the same dtype as x.
  """
  height, width = x.shape[1:3]
  padding = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), padding
  )


def mask_outside(
  x: jax.Array, sizes: jax.Array | None, *, level: int
) -> jax.Array:
  """Zeroes activations outside each image's valid area at a pooling level.

  Args:
    x: float (B, H, W, C) activations after `level` ceil-rounded poolings.
    sizes: int32 (B, 2) image (H_I, W_I); None leaves x unchanged.
    level: number of 2x2/2 poolings applied so far (0..4).

  Returns:
    x with rows >= ceil(H_I / 2^level) and columns >= ceil(W_I / 2^level)
    set to zero.
  """
  if sizes is None:
    return x
  valid = (sizes + (2**level - 1)) >> level  # (B, 2) ceil(size / 2^level)
  rows = jnp.arange(x.shape[1])[None, :] < valid[:, :1]
  cols = jnp.arange(x.shape[2])[None, :] < valid[:, 1:]
  inside = rows[:, :, None, None] & cols[:, None, :, None]
  return jnp.where(inside, x, jnp.zeros((), x.dtype))


class VGG19(nn.Module):
  """VGG19 convolutions up to conv5_4 after ReLU (no last pooling).

  Attributes:
    widths: output channels of the five blocks; (64, 128, 256, 512, 512) is
      the real network, smaller tuples give tiny variants for tests.
    dtype: computation dtype (float32, or bfloat16 on accelerators); the
      parameters stay float32 and the output is float32.
  """

  widths: Sequence[int] = WIDTHS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, sizes: jax.Array | None = None) -> jax.Array:
    """Applies the network.

    Args:
      x: float32 (B, H_I, W_I, 3) Caffe input (see `preprocess`).
      sizes: optional int32 (B, 2) true (H_I, W_I) of images padded at the
        bottom / right. Activations outside each image are then zeroed after
        every layer, which reproduces the unpadded network exactly: SAME
        padding sees zeros, and the zeros never win a max-pool against
        non-negative ReLU outputs (Caffe's ceil windows always hold one
        in-image cell).

    Returns:
      float32 (B, ceil(H_I/16), ceil(W_I/16), K) conv5_4 after ReLU.
    """
    if len(self.widths) != len(CONVS_PER_BLOCK):
      raise ValueError(
        f'widths must have {len(CONVS_PER_BLOCK)} entries, got {self.widths}'
      )
    x = mask_outside(x.astype(self.dtype), sizes, level=0)
    for block, (width, count) in enumerate(
      zip(self.widths, CONVS_PER_BLOCK), start=1
    ):
      if block > 1:
        x = pool_ceil(x)
      for index in range(1, count + 1):
        x = nn.Conv(
          width,
          (3, 3),
          padding='SAME',
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f'conv{block}_{index}',
        )(x)
        x = mask_outside(nn.relu(x), sizes, level=block - 1)
    return x.astype(jnp.float32)


def init_params(rng: jax.Array, *, widths: Sequence[int] = WIDTHS) -> dict:
  """Random He-normal kernels and zero biases, for tests and tiny variants.

  Drawn with one jax.random.normal call (Flax's per-layer initialisers
  compile for tens of seconds on a small CPU).

  Args:
    rng: PRNG key.
    widths: output channels of the five blocks.

  Returns:
    Variables dict {'params': {'conv1_1': {'kernel': float32 (3, 3, C_in, C),
    'bias': float32 (C,)}, ...}}.
  """
  if len(widths) != len(CONVS_PER_BLOCK):
    raise ValueError(
      f'widths must have {len(CONVS_PER_BLOCK)} entries, got {widths}'
    )
  shapes, channels = [], 3
  for width, count in zip(widths, CONVS_PER_BLOCK):
    for _ in range(count):
      shapes.append((3, 3, channels, width))
      channels = width
  sizes = [int(np.prod(shape)) for shape in shapes]
  noise = np.asarray(jax.random.normal(rng, (sum(sizes),), jnp.float32))
  params, offset = {}, 0
  for name, shape, size in zip(LAYER_NAMES, shapes, sizes):
    scale = np.sqrt(2.0 / (9 * shape[2]), dtype=np.float32)
    kernel = noise[offset : offset + size].reshape(shape) * scale
    params[name] = {
      'kernel': jnp.asarray(kernel),
      'bias': jnp.zeros((shape[-1],), jnp.float32),
    }
    offset += size
  return {'params': params}


def preprocess(rgb: jax.Array | np.ndarray) -> jax.Array:
  """Caffe preprocessing: RGB -> BGR, subtract the ImageNet mean, no scaling.

  Args:
    rgb: uint8 (B, H_I, W_I, 3) RGB images.

  Returns:
    float32 (B, H_I, W_I, 3) BGR input with CAFFE_MEAN_BGR subtracted.
  """
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise ValueError(f'rgb must be (B, H_I, W_I, 3), got shape {rgb.shape}')
  if rgb.dtype != np.uint8:
    raise TypeError(f'rgb must be uint8, got {rgb.dtype}')
  bgr = jnp.asarray(rgb)[..., ::-1].astype(jnp.float32)
  return bgr - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)


def _widths_of(params: dict) -> tuple[int, ...]:
  """Block widths read from the conv{b}_1 kernel shapes (static under jit)."""
  return tuple(
    params[f'conv{block}_1']['kernel'].shape[-1]
    for block in range(1, len(CONVS_PER_BLOCK) + 1)
  )


@functools.partial(jax.jit, static_argnames=('dtype', 'transpose'))
def _apply(
  params: dict,
  x: jax.Array,
  sizes: jax.Array | None,
  *,
  dtype: Any,
  transpose: bool,
) -> jax.Array:
  if transpose:  # the transposed image through transposed kernels
    params = jax.tree_util.tree_map(
      lambda p: jnp.swapaxes(p, 0, 1) if p.ndim == 4 else p, params
    )
    x = jnp.swapaxes(x, 1, 2)
    sizes = None if sizes is None else sizes[:, ::-1]
  module = VGG19(widths=_widths_of(params), dtype=dtype)
  out = module.apply({'params': params}, x, sizes)
  return jnp.swapaxes(out, 1, 2) if transpose else out


def features(
  variables: dict,
  x: jax.Array,
  sizes: jax.Array | None = None,
  *,
  dtype: Any = jnp.float32,
  transpose: bool | None = None,
) -> jax.Array:
  """conv5_4 activations after ReLU: the dense local descriptors F (Sec. 2).

  Jitted; the block widths come from the parameter shapes, so tiny variants
  from `init_params(..., widths=...)` work too. Compiles once per input shape
  and dtype.

  Args:
    variables: {'params': ...} from `load_params` or `init_params`.
    x: float32 (B, H_I, W_I, 3) Caffe input from `preprocess`.
    sizes: optional int32 (B, 2) true (H_I, W_I) of each image in a padded
      batch (`images.pad_batch`); the features inside each image then equal
      those of the unpadded image (see `VGG19.__call__`). Without it, padding
      changes the features near the image's bottom / right edge.
    dtype: computation dtype; jnp.bfloat16 halves memory traffic on GPUs.
    transpose: run the transposed image through spatially transposed kernels
      and transpose the result back (the same function). None: only on the
      CPU backend for landscape input (W_I > H_I), where XLA's CPU
      convolutions ran a 1024x768 image ~1.45x slower than its 768x1024
      transpose (benchmarks/vgg19_speed.py).

  Returns:
    float32 (B, ceil(H_I/16), ceil(W_I/16), K) conv5_4 after ReLU.
  """
  if not isinstance(variables, dict) or 'params' not in variables:
    raise TypeError(
      "variables must be a dict {'params': ...} as returned by "
      'weights.load_params() or vgg19.init_params()'
    )
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f'x must be (B, H_I, W_I, 3), got shape {x.shape}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'x must be floating (Caffe input), got {x.dtype}')
  if sizes is not None:
    sizes = jnp.asarray(sizes)
    if sizes.shape != (x.shape[0], 2):
      raise ValueError(
        f'sizes must be (B, 2) = ({x.shape[0]}, 2), got {sizes.shape}'
      )
    if not jnp.issubdtype(sizes.dtype, jnp.integer):
      raise TypeError(f'sizes must be integer, got {sizes.dtype}')
    sizes = sizes.astype(jnp.int32)
  if transpose is None:
    transpose = jax.default_backend() == 'cpu' and x.shape[2] > x.shape[1]
  return _apply(
    variables['params'],
    x,
    sizes,
    dtype=jnp.dtype(dtype),
    transpose=bool(transpose),
  )
