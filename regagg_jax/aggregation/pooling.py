"""Regional pooling of a conv5_4 map (eq. 3-5, 9) and global baselines.

Region descriptors: `first_order` (sum pooling, eq. 3, or alpha-weighted,
eq. 9) and `second_order` (log of the alpha-weighted second-moment matrix of
PCA-reduced local descriptors, eq. 4-5). Baselines on the whole valid area:
`spoc` [1], `mac`, `crow` [5], `rmac` / `rmac_regions` [6] and `gem`.

Every function works on one image with (M, H, W) region masks and under
`jax.vmap` over a padded batch: cells outside `valid` and regions outside
`region_valid` get zero weight, and a region without weight gives a zero
descriptor.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.aggregation import pca
from regagg_jax.features import weighting


def compute_region_weights(features, masks, valid=None, region_valid=None):
  """Cell weights of each region: its mask, restricted to valid cells/regions.

  Args:
    features: float32 (H, W, K) conv5_4 activations (only checked).
    masks: bool (M, H, W) region masks R'_m on the feature grid.
    valid: bool (H, W) valid cells, or None for all.
    region_valid: bool (M,) valid regions, or None for all.

  Returns:
    float32 (M, H, W) 0/1 weights.
  """
  valid = weighting.check_feature_map(features, valid)
  if masks.ndim != 3 or masks.shape[1:] != features.shape[:2]:
    raise ValueError(
      f'masks must be (M, H, W) with (H, W) = '
      f'{features.shape[:2]}, got {masks.shape}'
    )
  if masks.dtype != jnp.bool_:
    raise TypeError(f'masks must be bool, got {masks.dtype}')
  inside = jnp.logical_and(masks, valid)
  if region_valid is not None:
    if region_valid.shape != masks.shape[:1] or region_valid.dtype != jnp.bool_:
      raise ValueError(
        f'region_valid must be bool (M,) = {masks.shape[:1]}, '
        f'got {region_valid.dtype} {region_valid.shape}'
      )
    inside = jnp.logical_and(inside, region_valid[:, None, None])
  return inside.astype(features.dtype)


def _check_weights(features, beta, alpha):
  """Checks beta (K,) floating and alpha (H, W) or None against features."""
  if beta.shape != features.shape[-1:]:
    raise ValueError(f'beta must be (K,), got {beta.shape}')
  if not jnp.issubdtype(beta.dtype, jnp.floating):
    raise TypeError(f'beta must be floating, got {beta.dtype}')
  if alpha is not None and alpha.shape != features.shape[:2]:
    raise ValueError(f'alpha must be (H, W), got {alpha.shape}')


@jax.jit
def first_order(
  features, masks, beta, alpha=None, *, valid=None, region_valid=None
):
  """First-order region descriptors: eq. (3), or eq. (9) with `alpha`.

  f^1_Rm = l2(beta o sum_{p in R'_m} [alpha_p] f_p).

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    masks: bool (M, H, W) region masks R'_m.
    beta: float32 (K,) channel weights (eq. 2).
    alpha: float32 (H, W) spatial weights (eq. 1) for eq. (9), or None.
    valid: bool (H, W) valid cells, or None for all.
    region_valid: bool (M,) valid regions, or None for all.

  Returns:
    float32 (M, K) l2-normalised descriptors (zero rows for empty regions).
  """
  weights = compute_region_weights(features, masks, valid, region_valid)
  _check_weights(features, beta, alpha)
  if alpha is not None:
    weights = weights * alpha  # eq. (9)
  pooled = jnp.einsum('mhw,hwk->mk', weights, features) * beta  # eq. (3)
  return pca.l2_normalize(pooled)


LOG_METHODS = ('qr', 'eigh')
"""How `compute_log_covariances` gets the eigenpairs of G_m (eq. 5)."""


def compute_log_covariances(
  local_descriptors, weights, *, eps_rel=1e-3, method='qr'
):
  """Matrix log of the weighted average second moment of eq. (5).

  G_m = sum_p w_mp f~_p f~_p^T / sum_p w_mp (uncentred, as in O2P [12]),
  regularised as G_m + eps_rel tr(G_m) / K' I so that its condition number is
  at most 1 + K' / eps_rel: a region with fewer than K' cells has rank(G) <
  K' and no finite log otherwise; eigenvalues are clamped at that floor.
  The log is V diag(log(lambda / tr G + eps_rel / K')) V^T + log tr(G) I,
  computed on the trace-normalised spectrum. A region with zero weight mass
  or zero trace (alpha = 0, e.g. a black image) gives a zero matrix instead
  of log 0.

  With X_m the rows sqrt(w_mp / sum_p w_mp) f~_p, G_m = X_m^T X_m, and:
    'qr'   G_m is never formed: its eigenpairs come from the SVD (float32) of
           the R factor of a QR of X_m, lambda = sigma^2. The SVD resolves
           sigma to ~1e-7 sigma_max, i.e. lambda to ~1e-7 sqrt(lambda_max
           lambda); against scipy's float64 logm at K' = 128 this measured a
           relative Frobenius error of ~2e-6 on real VGG19 regions
           (tests/test_pooling.py). Batched tall QR and SVD run as loops of
           LAPACK-style calls: cheap on a CPU, slow on a GPU.
    'eigh' dense batched work for accelerators, matmuls at full float32
           precision (never TF32) and one `jnp.linalg.eigh`: V from the eigh
           of the trace-normalised, regularised G_m = X_m^T X_m; then
           C = (X_m V)^T (X_m V) / tr G + floor I, nearly diagonal, whose
           small entries are accurate relative to their own size (sums of
           squares), unlike eigh's eigenvalues (~1e-7 lambda_max); and
           log G = V log(C) V^T with log(C) to first order in C's
           off-diagonal part E (Daleckii-Krein): log(c_ii) on the diagonal,
           E_ij (log c_ii - log c_jj) / (c_ii - c_jj) off it. Against scipy's
           float64 logm on real VGG19 regions this measured ~1e-6 median and
           <= 1.6e-5 max relative Frobenius error, where the eigh eigenvalues
           alone gave up to 1.4e-3 (benchmarks/device_report.py).

  Args:
    local_descriptors: float32 (H, W, K') reduced local descriptors (eq. 4).
    weights: float32 (M, H, W) non-negative cell weights (alpha times masks).
    eps_rel: regularisation relative to the mean eigenvalue tr(G) / K'.
    method: one of LOG_METHODS.

  Returns:
    float32 (M, K', K') symmetric log(G_m + eps_rel tr(G_m) / K' I).
  """
  if method not in LOG_METHODS:
    raise ValueError(f'method must be one of {LOG_METHODS}, got {method!r}')
  height, width, reduced_dim = local_descriptors.shape
  mass = jnp.sum(weights, axis=(1, 2))
  row_scale = jnp.sqrt(weights / jnp.where(mass > 0, mass, 1.0)[:, None, None])
  rows = (row_scale[..., None] * local_descriptors).reshape(
    -1, height * width, reduced_dim
  )  # X_m, G_m = X_m^T X_m (eq. 5)
  floor = eps_rel / reduced_dim
  identity = jnp.eye(reduced_dim, dtype=rows.dtype)
  if method == 'qr':
    triangle = jnp.linalg.qr(rows, mode='r')
    _, singular, vectors = jnp.linalg.svd(triangle, full_matrices=True)
    eigenvalues = jnp.zeros(rows.shape[:1] + (reduced_dim,), rows.dtype)
    eigenvalues = eigenvalues.at[:, : singular.shape[-1]].set(singular**2)
    trace = jnp.sum(eigenvalues, axis=-1)
    safe_trace = jnp.where(trace > 0, trace, 1.0)
    normalised = eigenvalues / safe_trace[:, None] + floor
    log_values = jnp.log(jnp.maximum(normalised, floor))
    log_moments = jnp.einsum('mtr,mt,mts->mrs', vectors, log_values, vectors)
  else:
    log_moments, trace, safe_trace = _log_moments_eigh(rows, floor)
  log_moments = log_moments + jnp.log(safe_trace)[:, None, None] * identity
  return jnp.where((trace > 0)[:, None, None], log_moments, 0.0)


def _log_moments_eigh(rows, floor, *, series_below=1e-4):
  """log(G_m / tr G_m + floor I) by eigh plus a first-order correction.

  Args:
    rows: float32 (M, P, K') X_m, G_m = X_m^T X_m (eq. 5).
    floor: the regularisation eps_rel / K'.
    series_below: |c_ii / c_jj - 1| under which the divided difference
      uses its series 1 - r / 2 (log1p(r) / r loses digits there).

  Returns:
    float32 (M, K', K') logs of the normalised G_m, trace (M,) of G_m and
    the trace with zeros replaced by 1.
  """
  highest = jax.lax.Precision.HIGHEST
  identity = jnp.eye(rows.shape[-1], dtype=rows.dtype)
  moments = jnp.einsum('mpk,mpl->mkl', rows, rows, precision=highest)  # G_m
  trace = jnp.trace(moments, axis1=1, axis2=2)
  safe_trace = jnp.where(trace > 0, trace, 1.0)[:, None, None]
  _, vectors = jnp.linalg.eigh(moments / safe_trace + floor * identity)
  rotated = jnp.einsum('mpk,mkl->mpl', rows, vectors, precision=highest)
  nearly_diagonal = (
    jnp.einsum('mpk,mpl->mkl', rotated, rotated, precision=highest) / safe_trace
    + floor * identity
  )  # C = V^T (G / tr G + floor I) V
  diagonal = jnp.diagonal(nearly_diagonal, axis1=1, axis2=2)
  row_values, column_values = diagonal[:, :, None], diagonal[:, None, :]
  ratio = (row_values - column_values) / column_values
  divided = (
    jnp.where(
      jnp.abs(ratio) > series_below,
      jnp.log1p(ratio) / jnp.where(ratio == 0, 1.0, ratio),
      1.0 - ratio / 2,
    )
    / column_values
  )  # (log c_ii - log c_jj) / (c_ii - c_jj)
  log_nearly_diagonal = jnp.where(
    identity > 0,
    jnp.log(jnp.maximum(row_values, floor)) * identity,
    nearly_diagonal * divided,
  )
  log_moments = jnp.einsum(
    'mkr,mrs,mls->mkl',
    vectors,
    log_nearly_diagonal,
    vectors,
    precision=highest,
  )  # V log(C) V^T
  return log_moments, trace, safe_trace[:, 0, 0]


@functools.partial(jax.jit, static_argnames=('offdiag_scale', 'log_method'))
def second_order(
  features,
  masks,
  alpha,
  beta,
  pca1,
  *,
  valid=None,
  region_valid=None,
  eps_rel=1e-3,
  offdiag_scale=1.0,
  log_method='qr',
):
  """Second-order region descriptors of eq. (4)-(5).

  f~_p = U1^T (beta o f_p) exactly as eq. (4): only `pca1.components` is used
  and its mean is ignored. U1 is learnt on l2-normalised region descriptors
  (eq. 3) whose mean has no meaning at the scale of raw local descriptors, and
  eq. (5) pools the uncentred second moment; fit U1 with
  `pca.fit(..., center=False)` to match eq. (4) throughout. Then
  f^2_Rm = l2(vec(log G_Rm)), vec = upper triangle row by row.

  Args:
    features: float32 (H, W, K) conv5_4 activations after ReLU.
    masks: bool (M, H, W) region masks R'_m.
    alpha: float32 (H, W) spatial weights (eq. 1).
    beta: float32 (K,) channel weights (eq. 2).
    pca1: PCAParams with components (K, K') (U^1 of eq. 4).
    valid: bool (H, W) valid cells, or None for all.
    region_valid: bool (M,) valid regions, or None for all.
    eps_rel: regularisation of `compute_log_covariances`.
    offdiag_scale: factor on off-diagonal entries of vec: 1 is the paper's
      plain form, sqrt(2) makes the l2 norm the log-Euclidean (Frobenius) one.
    log_method: eigen-solver of `compute_log_covariances` ('qr' | 'eigh').

  Returns:
    float32 (M, K'(K'+1)/2) l2-normalised descriptors (zero rows for empty
    regions or regions with zero alpha mass).
  """
  weights = compute_region_weights(features, masks, valid, region_valid)
  _check_weights(features, beta, alpha)
  if pca1.components.ndim != 2 or pca1.components.shape[0] != beta.shape[0]:
    raise ValueError(
      f"pca1.components must be (K, K'), got {pca1.components.shape}"
    )
  local = (features * beta) @ pca1.components  # eq. (4)
  log_moments = compute_log_covariances(
    local, weights * alpha, eps_rel=eps_rel, method=log_method
  )
  rows, cols = np.triu_indices(local.shape[-1])
  entry_scale = np.where(rows == cols, 1.0, offdiag_scale).astype(np.float32)
  return pca.l2_normalize(log_moments[:, rows, cols] * entry_scale)


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
