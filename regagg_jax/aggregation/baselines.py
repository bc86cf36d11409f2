"""Global baselines the paper compares with (Table 1), on one conv5_4 map.

`spoc` [1], `mac`, `crow` [5], `rmac` / `rmac_regions` [6] and `gem`, each
pooled over the valid cells of the map and l2-normalised. Every function works
on one image and under `jax.vmap` over a padded batch: cells outside `valid`
get zero weight, and a map without a valid cell gives a zero descriptor.
"""

import functools

import jax
import jax.numpy as jnp

from regagg_jax.aggregation import pca
from regagg_jax.features import weighting


def _masked_max(features, masks):
  """Max over the cells of each mask: float32 (R, K), zeros for empty masks."""

  def region_max(mask):
    pooled = jnp.max(jnp.where(mask[..., None], features, -jnp.inf), (0, 1))
    return jnp.where(jnp.any(mask), pooled, 0.0)

  return jax.lax.map(region_max, masks)


@jax.jit
def mac(features, valid=None):
  """MAC: max over the valid cells of each channel, l2-normalised.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all.

  Returns:
    float32 (K,) l2-normalised descriptor (zeros without a valid cell).
  """
  valid = weighting.check_feature_map(features, valid)
  return pca.l2_normalize(_masked_max(features, valid[None])[0])


@functools.partial(jax.jit, static_argnames=('center_prior',))
def spoc(features, valid=None, *, center_prior=False):
  """SPoC [1]: sum pooling, optionally with the Gaussian centre prior.

  The prior (Babenko & Lempitsky 2015) weighs cell (y, x) by
  exp(-((y - c_y)^2 + (x - c_x)^2) / (2 sigma^2)) where (c_y, c_x) is the
  centre of the bounding box of the valid cells and sigma is one third of
  the distance from that centre to the closest box side (cell units).

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all.
    center_prior: use the Gaussian centre prior.

  Returns:
    float32 (K,) l2-normalised descriptor.
  """
  valid = weighting.check_feature_map(features, valid)
  weights = valid.astype(features.dtype)
  if center_prior:
    (top, left), (height, width) = _valid_box(valid)
    rows = jnp.arange(valid.shape[0]) - (top + (height - 1) / 2)
    cols = jnp.arange(valid.shape[1]) - (left + (width - 1) / 2)
    sigma = jnp.minimum(height, width) / 2 / 3
    sigma = jnp.where(sigma > 0, sigma, 1.0)
    weights = weights * jnp.exp(
      -(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2)
    )
  return pca.l2_normalize(jnp.einsum('hw,hwk->k', weights, features))


@functools.partial(jax.jit, static_argnames=('norm_order', 'root'))
def crow(features, valid=None, *, norm_order=2.0, root=2.0, eps=1e-6):
  """CroW [5]: l2(beta o sum_p alpha_p f_p) with CroW's a=2, b=2 weights.

  Kalantidis et al. 2016: spatial weights (S / ||S||_a)^(1/b) of the channel
  sum S, channel weights log(sum_j Q_j / Q_k) (here with eq. 2's epsilon).

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all.
    norm_order: CroW's a.
    root: CroW's b.
    eps: epsilon of the channel weights (eq. 2).

  Returns:
    float32 (K,) l2-normalised descriptor.
  """
  alpha = weighting.spatial_weights(
    features, valid, norm_order=norm_order, root=root
  )
  beta = weighting.channel_weights(features, valid, eps=eps)
  return pca.l2_normalize(beta * jnp.einsum('hw,hwk->k', alpha, features))


@jax.jit
def gem(features, valid=None, *, power=3.0, eps=1e-6):
  """GeM: (mean over valid cells of max(f, eps)^p)^(1/p), l2-normalised.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all.
    power: the exponent p.
    eps: clamp that keeps the power finite at zero activations.

  Returns:
    float32 (K,) l2-normalised descriptor (zeros without a valid cell).
  """
  valid = weighting.check_feature_map(features, valid)
  area = jnp.sum(valid).astype(features.dtype)
  powered = jnp.where(valid[..., None], jnp.maximum(features, eps) ** power, 0)
  mean = jnp.sum(powered, axis=(0, 1)) / jnp.where(area > 0, area, 1.0)
  return pca.l2_normalize(mean ** (1.0 / power))


def _valid_box(valid):
  """Top-left corner and size (int32 scalars) of the bounding box of valid."""

  def span(occupied):
    first = jnp.argmax(occupied)
    last = occupied.shape[0] - 1 - jnp.argmax(occupied[::-1])
    return first, jnp.where(jnp.any(occupied), last - first + 1, 0)

  top, height = span(jnp.any(valid, axis=1))
  left, width = span(jnp.any(valid, axis=0))
  return (top, left), (height, width)


@functools.partial(jax.jit, static_argnames=('levels', 'max_steps'))
def rmac_regions(features, valid=None, *, levels=3, overlap=0.4, max_steps=7):
  """Per-region MACs of R-MAC [6] (Tolias et al. 2016), before aggregation.

  Square regions in the bounding box of the valid cells (sides s <= t): at
  scale l = 1..levels the region width is w_l = floor(2 s / (l + 1)) (s at
  l = 1), with l regions along the short side and l + n - 1 along the long
  one; along a side of length S with c regions the i-th starts at
  floor(i (S - w_l) / (c - 1)). n in [2, max_steps] makes the overlap
  (s - b) / s of consecutive l = 1 regions, b = (t - s) / (n - 1), closest
  to `overlap`; n = 1 when s = t.
  Slots are ordered by scale, then row, then column; the layout is padded to
  a static size so the function vmaps over images of different shapes.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all.
    levels: number of scales L.
    overlap: target overlap of consecutive regions.
    max_steps: largest n considered.

  Returns:
    float32 (R, K) l2-normalised region MACs (zeros in unused slots) and
    bool (R,) slot validity, R = sum_l l (l + max_steps - 1).
  """
  valid = weighting.check_feature_map(features, valid)
  (top, left), (height, width) = _valid_box(valid)
  short, long = jnp.minimum(height, width), jnp.maximum(height, width)
  steps = jnp.arange(2, max_steps + 1)
  stride = (long - short) / (steps - 1)
  best = steps[
    jnp.argmin(jnp.abs((short - stride) / jnp.maximum(short, 1) - overlap))
  ]
  num_long = jnp.where(long > short, best, 1)
  rows_are_long = height >= width
  boxes, slot_valid = [], []
  for level in range(1, levels + 1):
    side = jnp.floor(2 * short / (level + 1)).astype(jnp.int32)
    count_long = level + num_long - 1
    for i in range(level):
      for j in range(level + max_steps - 1):
        short_start = jnp.floor(i * (short - side) / max(level - 1, 1))
        long_start = jnp.floor(
          j * (long - side) / jnp.maximum(count_long - 1, 1)
        )
        row = jnp.where(rows_are_long, long_start, short_start)
        col = jnp.where(rows_are_long, short_start, long_start)
        boxes.append(
          jnp.stack(
            [top + row.astype(jnp.int32), left + col.astype(jnp.int32), side]
          )
        )
        slot_valid.append(jnp.logical_and(j < count_long, side >= 1))
  boxes = jnp.stack(boxes)
  slot_valid = jnp.stack(slot_valid)
  rows = jnp.arange(valid.shape[0])[None, :, None]
  cols = jnp.arange(valid.shape[1])[None, None, :]
  row0, col0, side = (boxes[:, c, None, None] for c in range(3))
  masks = (
    (rows >= row0)
    & (rows < row0 + side)
    & (cols >= col0)
    & (cols < col0 + side)
    & valid
    & slot_valid[:, None, None]
  )
  return pca.l2_normalize(_masked_max(features, masks)), jnp.any(masks, (1, 2))


@functools.partial(jax.jit, static_argnames=('levels', 'max_steps'))
def rmac(features, valid=None, *, levels=3, overlap=0.4, max_steps=7):
  """R-MAC [6]: l2 of the sum of the l2-normalised region MACs.

  The pipeline's PCA-whitened variant whitens `rmac_regions` per region
  before summing.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    valid: bool (H, W) valid cells, or None for all.
    levels: number of scales L.
    overlap: target overlap of consecutive regions.
    max_steps: largest n considered.

  Returns:
    float32 (K,) l2-normalised descriptor.
  """
  regions, _ = rmac_regions(
    features, valid, levels=levels, overlap=overlap, max_steps=max_steps
  )
  return pca.l2_normalize(jnp.sum(regions, axis=0))
