"""Spatial and channel weights of a conv5_4 feature map (paper section 2-3).

`spatial_weights` is eq. (1): the channel sum of the activations at every cell,
l2-normalised over the valid cells. `channel_weights` is eq. (2): an idf-like
weight that grows with the sparsity of a channel (CroW [5]: Kalantidis,
Mellina, Osindero 2016, arXiv:1512.04065). Both work on one image; a padded
batch goes through `jax.vmap` with the per-image valid-area mask, and padded
cells never count.
"""

import functools

import jax
import jax.numpy as jnp


def check_feature_map(features, valid=None):
  """Checks one feature map and its valid-area mask at trace time.

  Args:
    features: float (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid (non-padded) cells, or None for all cells.

  Returns:
    bool (H, W) valid-area mask (all True when `valid` is None).

  Raises:
    ValueError: wrong rank or a `valid` shape that does not match.
    TypeError: non-floating features or a non-boolean mask.
  """
  if features.ndim != 3:
    raise ValueError(
      f'features must be (H, W, K), got shape {features.shape}; '
      'use jax.vmap for a batch'
    )
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise TypeError(f'features must be floating, got {features.dtype}')
  if valid is None:
    return jnp.ones(features.shape[:2], dtype=bool)
  if valid.shape != features.shape[:2]:
    raise ValueError(
      f'valid must be (H, W) = {features.shape[:2]}, got {valid.shape}'
    )
  if valid.dtype != jnp.bool_:
    raise TypeError(f'valid must be bool, got {valid.dtype}')
  return valid


@functools.partial(jax.jit, static_argnames=('norm_order', 'root'))
def spatial_weights(features, valid=None, *, norm_order=2.0, root=1.0):
  """Spatial weights alpha of eq. (1) (CroW spatial weights when root=2).

  alpha_p = (S_p / ||S||_a) ** (1 / b), S_p = sum_k f_{p,k} over valid cells p,
  with a = `norm_order` and b = `root`. The paper's eq. (1) is a=2, b=1; CroW
  [5] uses a=2, b=2. Padded cells get alpha = 0 and do not enter the norm; an
  all-zero map (a black image) gives alpha = 0 everywhere, never NaN.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU (non-negative).
    valid: bool (H, W) valid cells, or None for all cells.
    norm_order: the a of the a-norm over cells (eq. 1: 2).
    root: the b of the final 1/b power (eq. 1: 1).

  Returns:
    float32 (H, W) spatial weights alpha.
  """
  valid = check_feature_map(features, valid)
  summed = jnp.where(valid, jnp.sum(features, axis=-1), 0.0)  # eq. (1) f_bar
  norm = jnp.sum(summed**norm_order) ** (1.0 / norm_order)
  alpha = summed / jnp.where(norm > 0, norm, 1.0)
  if root != 1.0:
    alpha = alpha ** (1.0 / root)
  return alpha


@jax.jit
def channel_weights(features, valid=None, *, eps=1e-6):
  """Channel weights beta of eq. (2).

  Q_k = (1 / |valid|) sum_p 1[f_{p,k} > 0] is the fraction of valid cells
  where channel k fires (|valid| = WH for an unpadded map) and
  beta_k = log((K eps + sum_k Q_k) / (eps + Q_k)). A channel that never fires
  gets the largest weight log(K + sum_k Q_k / eps) (finite); a map without a
  valid cell gets Q = 0 and beta_k = log K for every k.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all cells.
    eps: the small positive constant epsilon of eq. (2).

  Returns:
    float32 (K,) channel weights beta.
  """
  valid = check_feature_map(features, valid)
  num_channels = features.shape[-1]
  area = jnp.maximum(jnp.sum(valid), 1).astype(features.dtype)
  active = jnp.logical_and(features > 0, valid[..., None])
  fraction = jnp.sum(active, axis=(0, 1)).astype(features.dtype) / area  # Q_k
  return jnp.log((num_channels * eps + jnp.sum(fraction)) / (eps + fraction))
