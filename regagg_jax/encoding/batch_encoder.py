"""A padded batch -> region descriptors: VGG19, alpha / beta, regions, pooling.

  encode_batch    one padded batch -> descriptors, validity, masks (one jit)
  run_batch       encode_batch unchecked, staged / fused / on a device mesh
  staged_forward  the staged path's jitted VGG19 conv5_4, alpha, beta
  propose_regions the staged path's region proposal (proposal.propose_batch)
  staged_pool     the staged path's jitted pooling of one Method
  limit_lapack_threads  caps the OpenBLAS threads behind jaxlib's QR / SVD

Batches come from `reading` (images of one shape bucket, images.bucket_shape,
padded to the batch size with a validity mask), so each bucket compiles
once (resources.compilations counts this module's jits). The static options
are proposal.RegionOptions and method_table.PoolingOptions (hashable
NamedTuples). With a traceable detector
backend (proposal.is_traceable: 'jax') `encode_batch` runs the whole chain of
a batch in ONE jit: VGG19 conv5_4, alpha (eq. 1), beta (eq. 2), the JAX
Hessian-affine detector, N_max / N_min selection, global fast k-means, hull
masks (proposal.propose_batch), pooling (eq. 3-5, 9 or a baseline) and
optional whitening (eq. 6). Otherwise ('hesaff') it runs the staged path:
jitted forward, host detection per image, jitted pooling. The pooling
methods are `method_table.POOLING`; `file_encoder` runs this module over
image files into stores. Nothing here reads a config.
"""

import ctypes
import functools
import glob
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy

from regagg_jax.features import images
from regagg_jax.encoding import parallel
from regagg_jax.encoding import resources
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import method_table
from regagg_jax.regions import proposal
from regagg_jax.features import vgg19
from regagg_jax.features import weighting


def limit_lapack_threads(num_threads=1):
  """Caps the threads of the OpenBLAS behind scipy.linalg.cython_lapack.

  jaxlib's CPU QR / SVD (eq. 5) call LAPACK through scipy's OpenBLAS, whose
  worker threads compete with XLA's thread pool (5-10x slower second-order
  pooling on 2 cores). Only that library is capped, through its
  scipy_openblas_set_num_threads entry point; numpy's and FAISS's OpenBLAS
  are left alone. Logs a warning if scipy bundles no OpenBLAS.

  Args:
    num_threads: threads that library may use, >= 1.

  Raises:
    ValueError: num_threads < 1.
  """
  if num_threads < 1:
    raise ValueError(f'num_threads must be >= 1, got {num_threads}')
  pattern = os.path.join(
    os.path.dirname(scipy.__file__),
    os.pardir,
    'scipy.libs',
    'libscipy_openblas*.so',
  )
  libraries = glob.glob(pattern)
  if not libraries:
    logging.warning(
      'no scipy OpenBLAS at %s; LAPACK threads unchanged', pattern
    )
  for library in libraries:
    ctypes.CDLL(library).scipy_openblas_set_num_threads(num_threads)


def _compute_maps(variables, rgb, sizes, cells, *, dtype):
  """uint8 (B, H_I, W_I, 3), int32 (B, 2) image sizes, bool (B, H, W) valid
  cells -> features (exact inside each padded image), alpha, beta."""
  features = vgg19.features(
    variables, vgg19.preprocess(rgb), sizes, dtype=dtype
  )
  alpha = jax.vmap(weighting.spatial_weights)(features, cells)  # eq. (1)
  beta = jax.vmap(weighting.channel_weights)(features, cells)  # eq. (2)
  return features, alpha, beta


def _pool_batch(
  features,
  alpha,
  beta,
  cells,
  masks,
  region_valid,
  reduction,
  *,
  method,
  options,
):
  pool = functools.partial(method.pool, reduction=reduction, options=options)
  return jax.vmap(pool)(features, alpha, beta, cells, masks, region_valid)


staged_forward = resources.counted_jit(
  _compute_maps, static_argnames=('dtype',)
)
"""Jitted (variables, rgb, sizes, cells, *, dtype) -> float32 (B, H, W, K)
conv5_4 features, alpha (B, H, W) of eq. (1), beta (B, K) of eq. (2): the
staged path's forward (one compilation per batch shape and dtype)."""

staged_pool = resources.counted_jit(
  _pool_batch, static_argnames=('method', 'options')
)
"""Jitted (features, alpha, beta, cells, masks bool (B, M, H, W), region_valid
bool (B, M), reduction, *, method: a method_table.Method, options:
method_table.PoolingOptions) -> float32 (B, M, D_store): the staged path's
pooling of one Method."""


def propose_regions(rgb, sizes, cells, alpha, region_options):
  """Region masks and validity of a padded batch, for the staged path.

  Args:
    rgb: uint8 (B, H_I, W_I, 3) padded RGB images.
    sizes: int32 (B, 2) (H_I, W_I) of each image; 0 for padding images.
    cells: bool (B, H, W) valid conv5_4 cells of each image.
    alpha: float32 (B, H, W) spatial weights of eq. (1).
    region_options: proposal.RegionOptions, or None for the whole image
      (M = 1).

  Returns:
    masks bool (B, M, H, W) and validity bool (B, M), numpy
    (proposal.propose_batch, whichever the backend).
  """
  if region_options is None:
    return cells[:, None], cells.any(axis=(1, 2))[:, None]
  masks, valid = proposal.propose_batch(
    rgb, alpha, cells, sizes, options=region_options
  )
  return np.asarray(masks), np.asarray(valid)


def _encode_chain(
  variables,
  rgb,
  sizes,
  cells,
  reduction,
  whitening,
  *,
  method,
  dtype,
  region_options,
  pooling_options,
  staged,
):
  """The per-batch chain; staged: separate jits and host region proposal."""
  forward, pool = (
    (staged_forward, staged_pool) if staged else (_compute_maps, _pool_batch)
  )
  features, alpha, beta = forward(variables, rgb, sizes, cells, dtype=dtype)
  if not method.regional:  # the whole image
    masks, valid = cells[:, None], jnp.any(cells, axis=(1, 2))[:, None]
  elif staged:
    masks, valid = propose_regions(rgb, sizes, cells, alpha, region_options)
  else:
    masks, valid = proposal.propose_batch(
      rgb, alpha, cells, sizes, options=region_options
    )
  descriptors = pool(
    features,
    alpha,
    beta,
    cells,
    masks,
    valid,
    reduction,
    method=method,
    options=pooling_options,
  )
  if whitening is not None:
    descriptors = pca.apply(whitening, descriptors, valid)  # eq. (6)
  return descriptors, valid, masks


_encode_fused = resources.counted_jit(
  _encode_chain,
  static_argnames=(
    'method',
    'dtype',
    'region_options',
    'pooling_options',
    'staged',
  ),
)


def _check_options(region_options, pooling_options):
  if region_options is not None:
    proposal.is_traceable(region_options)  # raises on a bad RegionOptions
  if not isinstance(pooling_options, method_table.PoolingOptions):
    raise TypeError(
      'pooling_options must be a method_table.PoolingOptions, got '
      f'{type(pooling_options).__name__}'
    )


def _check_batch(rgb, sizes, cells):
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise ValueError(f'rgb must be (B, H_I, W_I, 3), got {rgb.shape}')
  if rgb.dtype != np.uint8:
    raise TypeError(f'rgb must be uint8, got {rgb.dtype}')
  if sizes.shape != (rgb.shape[0], 2):
    raise ValueError(
      f'sizes must be (B, 2) = ({rgb.shape[0]}, 2), got {sizes.shape}'
    )
  if not jnp.issubdtype(sizes.dtype, jnp.integer):
    raise TypeError(f'sizes must be integer, got {sizes.dtype}')
  grid = (rgb.shape[0],) + images.feature_shape(*rgb.shape[1:3])
  if cells.shape != grid or cells.dtype != np.bool_:
    raise ValueError(
      f'cells must be bool {grid}, got {cells.dtype} {cells.shape}'
    )


def encode_batch(
  variables,
  rgb,
  sizes,
  cells,
  reduction,
  whitening,
  *,
  method,
  dtype='float32',
  region_options=None,
  pooling_options,
  staged=False,
):
  """Region descriptors of a padded batch (images.pad_batch layout).

  With a traceable region backend (proposal.is_traceable: 'jax'; or a
  global method) this is ONE jit
  over VGG19 conv5_4, alpha (eq. 1), beta (eq. 2), the detector, N_max /
  N_min selection, global fast k-means, hull masks, pooling (eq. 3-5, 9 or a
  baseline) and whitening (eq. 6), compiled once per batch shape, method and
  options. Otherwise ('hesaff', or staged=True) it runs the same chain as a
  jitted forward, host region proposal and jitted pooling.

  Args:
    variables: VGG19 variables {'params': ...}.
    rgb: uint8 (B, H_I, W_I, 3) padded RGB images.
    sizes: int32 (B, 2) (H_I, W_I) of each image; 0 for padding images.
    cells: bool (B, H, W) valid conv5_4 cells of each image.
    reduction: U^1 PCAParams (K, K') of eq. (4) for 'o2', else None.
    whitening: PCAParams of eq. (6) applied to the descriptors, or None to
      return them unwhitened.
    method: method_table.POOLING key.
    dtype: VGG19 compute dtype, 'float32' | 'bfloat16'.
    region_options: proposal.RegionOptions (detector backend, N_max, N_min,
      L, ...); needed by regional methods.
    pooling_options: method_table.PoolingOptions.
    staged: run the staged path even with the 'jax' backend.

  Returns:
    descriptors float32 (B, M, D) (zero rows where invalid), valid bool
    (B, M) and masks bool (B, M, H, W); M = 2^L for regional methods, else
    1 (the whole image). Padding images have no valid region.

  Raises:
    ValueError, TypeError: unknown method, missing options or U^1, or
      arrays of the wrong shape or dtype.
  """
  chosen = method_table.check_method(method, region_options, reduction)
  _check_options(region_options, pooling_options)
  _check_batch(rgb, sizes, cells)
  return run_batch(
    variables,
    rgb,
    sizes,
    cells,
    reduction,
    whitening,
    method=chosen,
    dtype=dtype,
    region_options=region_options,
    pooling_options=pooling_options,
    staged=staged,
  )


def _map_chain(
  variables,
  rgb,
  sizes,
  cells,
  reduction,
  whitening,
  *,
  mesh,
  method,
  dtype,
  region_options,
  pooling_options,
):
  """The fused chain on each device's slice of a mesh-sharded batch
  (parallel.map_batch): every image is independent, so no collectives."""
  chain = functools.partial(
    _encode_chain,
    method=method,
    dtype=dtype,
    region_options=region_options,
    pooling_options=pooling_options,
    staged=False,
  )
  return parallel.map_batch(
    mesh, chain, batched=(False, True, True, True, False, False)
  )(variables, rgb, sizes, cells, reduction, whitening)


_encode_sharded = resources.counted_jit(
  _map_chain,
  static_argnames=(
    'mesh',
    'method',
    'dtype',
    'region_options',
    'pooling_options',
  ),
)


def run_batch(
  variables,
  rgb,
  sizes,
  cells,
  reduction,
  whitening,
  *,
  method,
  dtype,
  region_options,
  pooling_options,
  staged,
  mesh=None,
):
  """`encode_batch` with a Method, unchecked.

  Runs the staged path (staged=True, or regions whose backend is not
  proposal.is_traceable), else the
  fused jit; with a mesh the fused chain runs per device (`_map_chain`) on
  a batch sharded along it (parallel.shard_batch).

  Args:
    variables, rgb, sizes, cells, reduction, whitening, dtype, staged: as in
      `encode_batch` (arrays already checked).
    method: method_table.Method.
    region_options: proposal.RegionOptions, or None for global methods.
    pooling_options: method_table.PoolingOptions.
    mesh: a 1-D jax.sharding.Mesh, or None for the default device.

  Returns:
    descriptors float32 (B, M, D), valid bool (B, M), masks bool
    (B, M, H, W), as in `encode_batch`.
  """
  staged = staged or (
    method.regional and not proposal.is_traceable(region_options)
  )
  options = dict(
    method=method,
    dtype=dtype,
    region_options=region_options,
    pooling_options=pooling_options,
  )
  if staged:
    return _encode_chain(
      variables, rgb, sizes, cells, reduction, whitening, staged=True, **options
    )
  if mesh is not None:
    return _encode_sharded(
      variables, rgb, sizes, cells, reduction, whitening, mesh=mesh, **options
    )
  return _encode_fused(
    variables, rgb, sizes, cells, reduction, whitening, staged=False, **options
  )
