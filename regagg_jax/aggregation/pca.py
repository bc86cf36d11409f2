"""PCA (eq. 4, U^1) and PCA-whitening (eq. 6, U^2 and s) of descriptors.

`fit` is a one-off host computation in numpy float64 (like the mAP code): the
whitening scale 1 / s_d amplifies the smallest kept components, whose
eigenvalues float32 would only resolve to ~1e-7 of the largest, and the
float64 covariance (D_in, D_in) (D_in = 8256 for K' = 128) and its top-D
eigenpairs (scipy `subset_by_index`) are computed once per database.
`apply` is pure JAX and jit-able. `choose_whitening` picks D (and whether to
whiten) from the number of fitting vectors.

`l2_normalize` lives here because every descriptor the pipeline emits ends
with it (eq. 3, 5, 6, 8); it maps the zero vector to zero.
"""

from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


class PCAParams(NamedTuple):
  """Learned projection; orbax saves it as is.

  Attributes:
    mean: float32 (D_in,) mean of the fitting set (zeros for `center=False`).
    components: float32 (D_in, D) orthonormal principal directions (U^1 of
      eq. 4 or U^2 of eq. 6), ordered by decreasing variance.
    scale: float32 (D,) multiplier after projection: 1 / s_d for whitening
      (eq. 6), ones otherwise.
  """

  mean: jnp.ndarray
  components: jnp.ndarray
  scale: jnp.ndarray


MIN_VECTORS_PER_DIM = 16
"""Fitting vectors per whitened dimension (measured on data/samples,
docs/numerics.md "Whitening on few images"): at 16 per dimension whitened
O2_R stays within 0.07 mAP of PCA without whitening, at 3-4 it loses
0.05-0.15 and just past the rank (1 per dimension) 0.5-0.7."""

MIN_WHITENED_DIM = 32
"""Below this D (when the cap forces it), `choose_whitening` keeps PCA
without whitening: on data/samples it matches or beats whitening at every D,
and 32 dimensions or fewer lose too much to low D and to whitening noise."""


class WhiteningChoice(NamedTuple):
  """What `choose_whitening` decided.

  Attributes:
    dim: D to fit.
    whiten: whether eq. (6) divides by s_d.
    note: one line saying why D or whiten differ from the request ('' if not).
  """

  dim: int
  whiten: bool
  note: str


def choose_whitening(
  num_vectors,
  input_dim,
  dim,
  *,
  whiten=True,
  min_vectors_per_dim=MIN_VECTORS_PER_DIM,
  min_whitened_dim=MIN_WHITENED_DIM,
):
  """D and whitening for eq. (6) fitted on `num_vectors` vectors.

  Whitening divides by s_d, so it amplifies the noise of directions the
  fitting set estimates badly; it needs `min_vectors_per_dim` vectors per
  dimension. D is min(dim, input_dim, num_vectors // min_vectors_per_dim);
  when that cap forces D below min(dim, min_whitened_dim), whitening is
  dropped instead and PCA keeps min(dim, input_dim, num_vectors - 1)
  dimensions (the rank of the centred vectors), which measures better.
  Without `whiten`, D is capped at that rank only.

  Args:
    num_vectors: valid fitting vectors.
    input_dim: D_in of the descriptors.
    dim: the requested D.
    whiten: whether whitening was asked for.
    min_vectors_per_dim: the margin (fitting vectors per whitened dim).
    min_whitened_dim: smallest D worth whitening.

  Returns:
    WhiteningChoice.

  Raises:
    ValueError: no fitting vector or dim < 1.
  """
  if num_vectors < 1 or dim < 1:
    raise ValueError(f'need num_vectors, dim >= 1, got {num_vectors}, {dim}')
  rank = max(1, min(dim, input_dim, num_vectors - 1))
  if not whiten:
    return WhiteningChoice(rank, False, '')
  capped = min(dim, input_dim, num_vectors // min_vectors_per_dim)
  if capped >= min(dim, input_dim):
    return WhiteningChoice(capped, True, '')
  if capped < min(dim, min_whitened_dim):
    return WhiteningChoice(
      rank,
      False,
      f'{num_vectors} fitting vectors are too few to whiten D >= '
      f'{min(dim, min_whitened_dim)} ({min_vectors_per_dim} per dimension): '
      f'PCA without whitening, D = {rank}; whiten with more images '
      '(pca.fit_on)',
    )
  return WhiteningChoice(
    capped,
    True,
    f'PCA-whitening D capped from {dim} to {capped}: {num_vectors} fitting '
    f'vectors, {min_vectors_per_dim} per dimension',
  )


def l2_normalize(x, *, axis=-1):
  """Divides by the l2 norm along `axis`; the zero vector stays zero.

  Args:
    x: float32 (..., D) vectors.
    axis: the axis holding the vector entries.

  Returns:
    float32 (..., D) unit vectors (zero where the input is zero).
  """
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.where(norm > 0, norm, 1.0)


def _top_eigenpairs(matrix, count):
  """The `count` largest eigenpairs of a symmetric float64 matrix, descending."""
  size = matrix.shape[0]
  values, vectors = scipy.linalg.eigh(
    matrix, subset_by_index=[size - count, size - 1]
  )
  return values[::-1], vectors[:, ::-1]


def fit(
  x,
  dim,
  *,
  whiten=False,
  mask=None,
  center=True,
  min_variance=1e-10,
  min_vectors_per_dim=MIN_VECTORS_PER_DIM,
):
  """Fits PCA (eq. 4: U^1) or PCA-whitening (eq. 6: U^2 and s) on the host.

  Eigendecomposition in float64 of the covariance C = X_c^T X_c / n of the
  n valid rows (X_c centred, or raw for `center=False`), through the n x n Gram
  matrix when n < D_in. Components are sign-fixed so that the entry of largest
  magnitude is positive, making fits reproducible. With `whiten=True`,
  s_d = sqrt(lambda_d) is the standard deviation of the fitting set along
  component d (the paper's singular values divided by sqrt(n), a global factor
  that the final l2 normalisation cancels), so the whitened fitting set has
  identity covariance.

  Args:
    x: float (N, D_in) descriptors, one per row (e.g. l2-normalised region
      descriptors of a database).
    dim: number D of components to keep, at most D_in.
    whiten: divide by s_d (eq. 6) when True.
    mask: bool (N,) rows to use (padded rows False), or None for all.
    center: subtract the mean of the valid rows first. eq. (6) is written
      without a mean; the standard PCA-whitening of CroW / R-MAC centres.
    min_variance: lambda_d relative to the largest eigenvalue below which a
      component counts as outside the fitting set's span: whitening gives it
      scale 0 (1 / s_d would only amplify noise).
    min_vectors_per_dim: whitening on fewer rows than this times `dim` is
      logged as a warning (see `choose_whitening`).

  Returns:
    PCAParams with float32 arrays.

  Raises:
    ValueError: wrong rank, `dim` out of range, mask shape, no valid row.
    TypeError: non-floating `x` or non-boolean mask.
  """
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'x must be (N, D_in), got shape {x.shape}')
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f'x must be floating, got {x.dtype}')
  if not 1 <= dim <= x.shape[1]:
    raise ValueError(f'dim must be in [1, D_in={x.shape[1]}], got {dim}')
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != x.shape[:1]:
      raise ValueError(f'mask must be (N,) = {x.shape[:1]}, got {mask.shape}')
    if mask.dtype != np.bool_:
      raise TypeError(f'mask must be bool, got {mask.dtype}')
    x = x[mask]
  if x.shape[0] == 0:
    raise ValueError('no valid row to fit PCA on')
  if dim > x.shape[0] - int(center):
    logging.warning(
      'PCA dim %d exceeds the rank %d of the fitting set; the '
      'extra components are arbitrary',
      dim,
      x.shape[0] - int(center),
    )
  if whiten and x.shape[0] < min_vectors_per_dim * dim:
    logging.warning(
      'PCA-whitening D = %d fitted on %d vectors (fewer than %d per '
      'dimension) amplifies noise and ruins retrieval; '
      'pca.choose_whitening(%d, %d, %d) picks a safe D',
      dim,
      x.shape[0],
      min_vectors_per_dim,
      x.shape[0],
      x.shape[1],
      dim,
    )
  centred = x.astype(np.float64)  # a copy, centred in place
  mean = centred.mean(axis=0) if center else np.zeros(x.shape[1])
  centred -= mean
  num_rows = centred.shape[0]
  if num_rows < centred.shape[1]:
    rank = min(dim, num_rows)
    gram_values, gram_vectors = _top_eigenpairs(
      centred @ centred.T / num_rows, rank
    )
    values = np.zeros(dim)
    values[:rank] = np.maximum(gram_values, 0.0)
    components = np.zeros((x.shape[1], dim))
    directions = centred.T @ gram_vectors
    components[:, :rank] = directions / np.maximum(
      np.linalg.norm(directions, axis=0), np.finfo(np.float64).tiny
    )
  else:
    values, components = _top_eigenpairs(centred.T @ centred / num_rows, dim)
    values = np.maximum(values, 0.0)
  largest = np.argmax(np.abs(components), axis=0)
  signs = np.sign(components[largest, np.arange(dim)])
  components = components * np.where(signs == 0, 1.0, signs)
  if whiten:
    floor = min_variance * max(values[0], np.finfo(np.float64).tiny)
    spanned = values > floor
    scale = np.where(  # eq. (6) 1 / s_d
      spanned, 1.0 / np.sqrt(np.where(spanned, values, 1.0)), 0.0
    )
  else:
    scale = np.ones(dim)
  return PCAParams(
    mean=jnp.asarray(mean, jnp.float32),
    components=jnp.asarray(components, jnp.float32),
    scale=jnp.asarray(scale, jnp.float32),
  )


@jax.jit
def apply(params, x, valid=None):
  """Projects (and whitens) descriptors, then l2-normalises (eq. 6).

  y = l2(diag(scale) U^T (x - mean)); eq. (6) with `fit(..., whiten=True)`.
  Rows marked invalid come out as zero vectors.

  Args:
    params: PCAParams from `fit`.
    x: float32 (..., D_in) descriptors.
    valid: bool (...) rows to keep, or None for all.

  Returns:
    float32 (..., D) l2-normalised projected descriptors.

  Raises:
    ValueError: last axis of `x` is not D_in, or `valid` shape mismatch.
    TypeError: non-floating `x` or non-boolean `valid`.
  """
  d_in = params.components.shape[0]
  if x.ndim < 1 or x.shape[-1] != d_in:
    raise ValueError(f'x must be (..., D_in={d_in}), got shape {x.shape}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'x must be floating, got {x.dtype}')
  projected = (x - params.mean) @ params.components
  projected = l2_normalize(projected * params.scale)
  if valid is None:
    return projected
  if valid.shape != x.shape[:-1]:
    raise ValueError(f'valid must be {x.shape[:-1]}, got {valid.shape}')
  if valid.dtype != jnp.bool_:
    raise TypeError(f'valid must be bool, got {valid.dtype}')
  return jnp.where(valid[..., None], projected, 0.0)
