"""Regional pooling of a conv5_4 map (eq. 3-5, 9).

Region descriptors: `first_order` (sum pooling, eq. 3, or alpha-weighted,
eq. 9) and `second_order` (log of the alpha-weighted second-moment matrix of
PCA-reduced local descriptors, eq. 4-5). The global baselines the paper
compares with are in `baselines`.

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
