"""Images -> region descriptors: VGG19, alpha / beta, regions, pooling.

  POOLING         pooling.method -> Method (per-image pooling function)
  encode_batch    one padded batch -> descriptors, validity, masks (one jit)
  encode_rows     image files (rows of a list) -> index.Store, one pass
  fit_reduction   image files -> U^1 of eq. (4) on eq. (3) descriptors
  encode_methods  image files -> {method: index.Store}, one VGG19 pass
  compilations    how often this module's jitted functions were compiled
  limit_lapack_threads  caps the OpenBLAS threads behind jaxlib's QR / SVD

Images are decoded and resized on `num_threads` host threads (`reading`),
`prefetch` batches ahead of the device, grouped into batches of one shape bucket
(images.bucket_shape) and padded to the batch size with a validity mask, so
each bucket compiles once. With the 'jax' detector backend `encode_batch`
runs the whole chain of a batch in ONE jit: VGG19 conv5_4, alpha (eq. 1),
beta (eq. 2), the JAX Hessian-affine detector, N_max / N_min selection,
global fast k-means, hull masks (regions.propose_batch), pooling (eq. 3-5,
9 or a baseline) and optional whitening (eq. 6). The 'hesaff' backend runs
the staged path: jitted forward, host detection per image, jitted pooling.

Second-order descriptors need U^1 (eq. 4), a PCA learnt on first-order
region descriptors (eq. 3): `fit_reduction` learns it, then `encode_rows`
encodes in one pass. `encode_methods` (the demo and pipeline) pools several
methods from one VGG19 pass and is two-pass for 'o2': pass 1 pools eq. (3)
and fits U^1 (unless given); pass 2 pools eq. (4-5) from the conv5_4 maps
kept in memory (up to cache_mib) or recomputed. Nothing here reads a config.
"""

import collections
import ctypes
import functools
import glob
import os
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy
import tqdm

from regagg_jax import images
from regagg_jax import index
from regagg_jax import parallel
from regagg_jax import pca
from regagg_jax import pooling
from regagg_jax import reading
from regagg_jax import regions
from regagg_jax import vgg19
from regagg_jax import weighting


class Method(NamedTuple):
  """A pooling method: pool(features, alpha, beta, cells, masks, region_valid,
  reduction, options) -> float32 (M, D_store) for one image (vmapped).

  Attributes:
    pool: the per-image pooling function.
    regional: pools the 2^L proposed regions (else the whole image, M = 1).
    reduced: needs U^1 of eq. (4).
  """
  pool: Callable
  regional: bool
  reduced: bool


def _pool_sum(features, alpha, beta, cells, masks, region_valid, reduction,
              options):
  del alpha, reduction, options
  return pooling.first_order(features, masks, beta, valid=cells,  # eq. (3)
                             region_valid=region_valid)


def _pool_first_order(features, alpha, beta, cells, masks, region_valid,
                      reduction, options):
  del reduction, options
  return pooling.first_order(features, masks, beta, alpha,  # eq. (9)
                             valid=cells, region_valid=region_valid)


def _pool_second_order(features, alpha, beta, cells, masks, region_valid,
                       reduction, options):
  return pooling.second_order(  # eq. (4-5)
      features, masks, alpha, beta, reduction, valid=cells,
      region_valid=region_valid, offdiag_scale=options['offdiag_scale'])


def _baseline(function, **option_names):
  """Wraps a global baseline (features, valid) -> (K,) as a 1-region Method."""
  def pool(features, alpha, beta, cells, masks, region_valid, reduction,
           options):
    del alpha, beta, masks, region_valid, reduction
    kwargs = {arg: options[name] for arg, name in option_names.items()}
    return function(features, cells, **kwargs)[None]
  return pool


POOLING = {
    'o2': Method(_pool_second_order, regional=True, reduced=True),
    'o1': Method(_pool_first_order, regional=True, reduced=False),
    'spoc': Method(_baseline(pooling.spoc), regional=False, reduced=False),
    'mac': Method(_baseline(pooling.mac), regional=False, reduced=False),
    'crow': Method(_baseline(pooling.crow), regional=False, reduced=False),
    'rmac': Method(_baseline(pooling.rmac, levels='rmac_levels'),
                   regional=False, reduced=False),
    'gem': Method(_baseline(pooling.gem, power='gem_power'), regional=False,
                  reduced=False),
}
"""pooling.method -> Method."""

_SUM = Method(_pool_sum, regional=True, reduced=False)  # U^1's training set


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
  pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir,
                         'scipy.libs', 'libscipy_openblas*.so')
  libraries = glob.glob(pattern)
  if not libraries:
    logging.warning('no scipy OpenBLAS at %s; LAPACK threads unchanged',
                    pattern)
  for library in libraries:
    ctypes.CDLL(library).scipy_openblas_set_num_threads(num_threads)


_TRACES = collections.Counter()  # jitted function name -> traces


def _jit(function, static_argnames):
  """jax.jit that counts its traces: one per compilation (cache miss)."""
  @functools.wraps(function)
  def traced(*args, **kwargs):
    _TRACES[function.__name__] += 1
    return function(*args, **kwargs)
  return jax.jit(traced, static_argnames=static_argnames)


def compilations():
  """How many times encode_batch and the staged jits were compiled.

  Counts the traces of this module's own jitted functions (the fused
  encode_batch, the staged forward and pooling): jax.jit traces exactly once
  per compilation-cache miss (new shapes, dtypes, static options, input
  shardings). Functions they call are traced inside them and not counted.

  Returns:
    int, cumulative over this process.
  """
  return sum(_TRACES.values())


def _compute_maps(variables, rgb, sizes, cells, *, dtype):
  """uint8 (B, H_I, W_I, 3), int32 (B, 2) image sizes, bool (B, H, W) valid
  cells -> features (exact inside each padded image), alpha, beta."""
  features = vgg19.features(variables, vgg19.preprocess(rgb), sizes,
                            dtype=dtype)
  alpha = jax.vmap(weighting.spatial_weights)(features, cells)  # eq. (1)
  beta = jax.vmap(weighting.channel_weights)(features, cells)  # eq. (2)
  return features, alpha, beta


def _pool_batch(features, alpha, beta, cells, masks, region_valid, reduction,
                *, method, options):
  pool = functools.partial(method.pool, reduction=reduction,
                           options=dict(options))
  return jax.vmap(pool)(features, alpha, beta, cells, masks, region_valid)


_forward = _jit(_compute_maps, static_argnames=('dtype',))
_pool = _jit(_pool_batch, static_argnames=('method', 'options'))


def _propose(rgb, sizes, cells, alpha, region_options):
  """Region masks bool (B, M, H, W) and validity (B, M) of a padded batch,
  on the host ('hesaff': per image on its own area; 'jax': the batch)."""
  if region_options is None:
    return cells[:, None], cells.any(axis=(1, 2))[:, None]
  if region_options['backend'] == 'jax':
    masks, valid = regions.propose_batch(rgb, alpha, cells, sizes,
                                         **region_options)
    return np.asarray(masks), np.asarray(valid)
  rgb, sizes = np.asarray(rgb), np.asarray(sizes)
  count = 2 ** region_options['num_clusters']
  masks = np.zeros((len(cells), count) + cells.shape[1:], bool)
  valid = np.zeros((len(cells), count), bool)
  for slot, (height_i, width_i) in enumerate(sizes):
    if height_i:
      height, width = images.feature_shape(height_i, width_i)
      masks[slot, :, :height, :width], valid[slot] = regions.propose(
          rgb[slot, :height_i, :width_i],
          np.asarray(alpha[slot, :height, :width]), **region_options)
  return masks, valid


def _encode_chain(variables, rgb, sizes, cells, reduction, whitening, *,
                  method, dtype, region_options, pooling_options, staged):
  """The per-batch chain; staged: separate jits and host region proposal."""
  forward, pool = (_forward, _pool) if staged else (
      _compute_maps, _pool_batch)
  features, alpha, beta = forward(variables, rgb, sizes, cells, dtype=dtype)
  if not method.regional:  # the whole image
    masks, valid = cells[:, None], jnp.any(cells, axis=(1, 2))[:, None]
  elif staged:
    masks, valid = _propose(rgb, sizes, cells, alpha, dict(region_options))
  else:
    masks, valid = regions.propose_batch(rgb, alpha, cells, sizes,
                                         **dict(region_options))
  descriptors = pool(features, alpha, beta, cells, masks, valid, reduction,
                     method=method, options=pooling_options)
  if whitening is not None:
    descriptors = pca.apply(whitening, descriptors, valid)  # eq. (6)
  return descriptors, valid, masks


_encode_fused = _jit(_encode_chain, static_argnames=(
    'method', 'dtype', 'region_options', 'pooling_options', 'staged'))


def _items(options):
  """A dict of options as a hashable, sorted tuple of items (None stays)."""
  return None if options is None else tuple(sorted(dict(options).items()))


def _check_method(method, region_options, reduction, *, fitted_here=False):
  """POOLING[method], if its region_options and U^1 (unless fitted_here)
  are given."""
  if method not in POOLING:
    raise ValueError(f'pooling method must be one of {sorted(POOLING)}, '
                     f'got {method!r}')
  if POOLING[method].regional and region_options is None:
    raise ValueError(f'regional method {method!r} needs region_options')
  if POOLING[method].reduced and reduction is None and not fitted_here:
    raise ValueError(f'method {method!r} needs reduction (U^1 of eq. 4, '
                     'see fit_reduction)')
  return POOLING[method]


def _check_batch(rgb, sizes, cells):
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise ValueError(f'rgb must be (B, H_I, W_I, 3), got {rgb.shape}')
  if rgb.dtype != np.uint8:
    raise TypeError(f'rgb must be uint8, got {rgb.dtype}')
  if sizes.shape != (rgb.shape[0], 2):
    raise ValueError(f'sizes must be (B, 2) = ({rgb.shape[0]}, 2), got '
                     f'{sizes.shape}')
  if not jnp.issubdtype(sizes.dtype, jnp.integer):
    raise TypeError(f'sizes must be integer, got {sizes.dtype}')
  grid = (rgb.shape[0],) + images.feature_shape(*rgb.shape[1:3])
  if cells.shape != grid or cells.dtype != np.bool_:
    raise ValueError(f'cells must be bool {grid}, got {cells.dtype} '
                     f'{cells.shape}')


def encode_batch(variables, rgb, sizes, cells, reduction, whitening, *,
                 method, dtype='float32', region_options=None,
                 pooling_options, staged=False):
  """Region descriptors of a padded batch (images.pad_batch layout).

  With region_options backend 'jax' (or a global method) this is ONE jit
  over VGG19 conv5_4, alpha (eq. 1), beta (eq. 2), the detector, N_max /
  N_min selection, global fast k-means, hull masks, pooling (eq. 3-5, 9 or a
  baseline) and whitening (eq. 6), compiled once per batch shape, method and
  options. Backend 'hesaff' (or staged=True) runs the same chain as a
  jitted forward, host region proposal and jitted pooling.

  Args:
    variables: VGG19 variables {'params': ...}.
    rgb: uint8 (B, H_I, W_I, 3) padded RGB images.
    sizes: int32 (B, 2) (H_I, W_I) of each image; 0 for padding images.
    cells: bool (B, H, W) valid conv5_4 cells of each image.
    reduction: U^1 PCAParams (K, K') of eq. (4) for 'o2', else None.
    whitening: PCAParams of eq. (6) applied to the descriptors, or None to
      return them unwhitened.
    method: POOLING key.
    dtype: VGG19 compute dtype, 'float32' | 'bfloat16'.
    region_options: keywords of regions.propose_batch (backend, n_max,
      n_min, num_clusters, min_cells), a dict or tuple of items; needed by
      regional methods.
    pooling_options: {'gem_power', 'offdiag_scale', 'rmac_levels'}, a dict
      or tuple of items.
    staged: run the staged path even with the 'jax' backend.

  Returns:
    descriptors float32 (B, M, D) (zero rows where invalid), valid bool
    (B, M) and masks bool (B, M, H, W); M = 2^L for regional methods, else
    1 (the whole image). Padding images have no valid region.

  Raises:
    ValueError, TypeError: unknown method, missing options or U^1, or
      arrays of the wrong shape or dtype.
  """
  chosen = _check_method(method, region_options, reduction)
  _check_batch(rgb, sizes, cells)
  return _encode(variables, rgb, sizes, cells, reduction, whitening,
                 method=chosen, dtype=dtype,
                 region_options=_items(region_options),
                 pooling_options=_items(pooling_options), staged=staged)


def _map_chain(variables, rgb, sizes, cells, reduction, whitening, *, mesh,
               method, dtype, region_options, pooling_options):
  """The fused chain on each device's slice of a mesh-sharded batch
  (parallel.map_batch): every image is independent, so no collectives."""
  chain = functools.partial(
      _encode_chain, method=method, dtype=dtype,
      region_options=region_options, pooling_options=pooling_options,
      staged=False)
  return parallel.map_batch(
      mesh, chain, batched=(False, True, True, True, False, False))(
          variables, rgb, sizes, cells, reduction, whitening)


_encode_sharded = _jit(_map_chain, static_argnames=(
    'mesh', 'method', 'dtype', 'region_options', 'pooling_options'))


def _encode(variables, rgb, sizes, cells, reduction, whitening, *, method,
            dtype, region_options, pooling_options, staged, mesh=None):
  """encode_batch with a Method and option tuples, unchecked; with a mesh
  the fused chain runs per device (`_map_chain`)."""
  staged = staged or (method.regional
                      and dict(region_options)['backend'] != 'jax')
  options = dict(method=method, dtype=dtype, region_options=region_options,
                 pooling_options=pooling_options)
  if staged:
    return _encode_chain(variables, rgb, sizes, cells, reduction, whitening,
                         staged=True, **options)
  if mesh is not None:
    return _encode_sharded(variables, rgb, sizes, cells, reduction,
                           whitening, mesh=mesh, **options)
  return _encode_fused(variables, rgb, sizes, cells, reduction, whitening,
                       staged=False, **options)


def _collect(outputs, rows, sizes, descriptors, valid, masks):
  """Keeps each real image's (descriptors, valid, masks on its grid, size)."""
  descriptors, valid, masks = (np.asarray(a) for a in (descriptors, valid,
                                                       masks))
  for slot, row in enumerate(rows):
    height_i, width_i = (int(s) for s in sizes[slot])
    height, width = images.feature_shape(height_i, width_i)
    outputs[row] = (descriptors[slot], valid[slot],
                    masks[slot, :, :height, :width], (height_i, width_i))


def _encode_rows(variables, image_paths, rows, method, *, reduction,
                 whitening, region_options, pooling_options, max_size,
                 batch_size, dtype, boxes, rotations, apply_exif, mesh,
                 num_threads, prefetch):
  """{row: per-image outputs} and skipped [path, reason] of one pass.

  A batch's outputs are fetched after the next batch is dispatched, so the
  device runs while the host collects and pads.
  """
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  if mesh is not None:
    if batch_size % mesh.size:
      raise ValueError(f'batch_size {batch_size} is not a multiple of the '
                       f'{mesh.size} mesh devices')
    variables, reduction, whitening = parallel.replicate(
        mesh, (variables, reduction, whitening))
  read = reading.reader(image_paths, boxes=boxes, rotations=rotations,
                 max_size=max_size, apply_exif=apply_exif)
  outputs, skipped, in_flight = {}, [], collections.deque()
  for batch in reading.read_batches(read, rows, image_paths, skipped,
                             batch_size=batch_size, num_threads=num_threads,
                             prefetch=prefetch):
    arrays = (batch.rgb, batch.sizes, batch.cells)
    if mesh is not None:
      arrays = parallel.shard_batch(mesh, arrays)
    in_flight.append((batch, _encode(
        variables, *arrays, reduction, whitening, method=method, dtype=dtype,
        region_options=_items(region_options),
        pooling_options=_items(pooling_options), staged=False, mesh=mesh)))
    if len(in_flight) > 1:  # fetch the previous batch while this one runs
      done, result = in_flight.popleft()
      _collect(outputs, done.rows, done.sizes, *result)
  for done, result in in_flight:
    _collect(outputs, done.rows, done.sizes, *result)
  return outputs, skipped


def encode_rows(variables, image_paths, rows, method, *, region_options,
                pooling_options, reduction=None, whitening=None, max_size=0,
                batch_size=4, dtype='float32', boxes=None, rotations=None,
                apply_exif=True, mesh=None, num_threads=4, prefetch=2):
  """Encodes the images image_paths[r], r in rows, in one pass.

  Images are decoded and resized on num_threads host threads, prefetch
  batches ahead, grouped into shape buckets, padded to batch_size and run
  through `encode_batch` (one jit with the 'jax' backend, staged with
  'hesaff'). Unreadable images are skipped, logged and reported.

  Args:
    variables: VGG19 variables {'params': ...}.
    image_paths: all N image files (rows index it).
    rows: absolute row numbers to encode, without repeats.
    method: POOLING key.
    region_options: keywords of regions.propose_batch (backend, n_max,
      n_min, num_clusters, min_cells); needed by regional methods.
    pooling_options: {'gem_power', 'offdiag_scale', 'rmac_levels'}.
    reduction: U^1 (eq. 4), required for 'o2' (see `fit_reduction`).
    whitening: PCAParams of eq. (6) applied before storing, or None.
    max_size: longer side images are shrunk to; 0 keeps the original size.
    batch_size: images per jitted batch (padded with empty images).
    dtype: VGG19 compute dtype, 'float32' | 'bfloat16'.
    boxes: float (N, 4) x1 y1 x2 y2 crops at full resolution, or None.
    rotations: N clockwise degrees (multiples of 90), or None.
    apply_exif: apply JPEG EXIF orientations when reading.
    mesh: a 1-D jax.sharding.Mesh (parallel.make_mesh): batches are sharded
      along it, variables and PCA parameters replicated; batch_size must be
      a multiple of its size. None: the default device.
    num_threads: host threads decoding images.
    prefetch: batches decoded ahead of the one being encoded.

  Returns:
    index.Store of the readable rows in the order of `rows`: float32
    (N', M, D) descriptors, bool (N', M) validity, masks, U^1 for 'o2',
    metadata 'rows', 'sizes', 'skipped' ([path, reason]), 'reduction_hash',
    'whitening_hash', 'apply_exif', 'inputs_hash'.

  Raises:
    ValueError: unknown method, missing options or U^1, bad rows, sizes or
      counts.
  """
  chosen = _check_method(method, region_options, reduction)
  rows = [int(row) for row in rows]
  outputs, skipped = _encode_rows(
      variables, image_paths, rows, chosen,
      reduction=reduction if chosen.reduced else None,
      whitening=whitening, region_options=region_options,
      pooling_options=pooling_options, max_size=max_size,
      batch_size=batch_size, dtype=dtype, boxes=boxes, rotations=rotations,
      apply_exif=apply_exif, mesh=mesh, num_threads=num_threads,
      prefetch=prefetch)
  num_regions = 2 ** region_options['num_clusters'] if chosen.regional else 1
  store = _assemble(image_paths, rows, apply_exif, outputs, skipped,
                    num_regions, reduction if chosen.reduced else None)
  store.metadata['whitening_hash'] = index.hash_params(whitening)
  return store


def fit_reduction(variables, image_paths, rows, *, k_prime, region_options,
                  max_size=0, batch_size=4, dtype='float32', boxes=None,
                  rotations=None, apply_exif=True, mesh=None, num_threads=4,
                  prefetch=2):
  """U^1 of eq. (4): PCA (uncentred) of the eq. (3) region descriptors.

  Args:
    variables, image_paths, rows, region_options, max_size, batch_size,
      dtype, boxes, rotations, apply_exif, mesh, num_threads, prefetch: as
      in `encode_rows`.
    k_prime: K', the number of components.

  Returns:
    pca.PCAParams with components float32 (K, K'), fitted with
    pca.fit(..., center=False) on the valid regions of the readable rows.

  Raises:
    ValueError: no region_options, bad reading arguments, or no readable
      image.
  """
  if region_options is None:
    raise ValueError('fit_reduction needs region_options (eq. 3 regions)')
  rows = [int(row) for row in rows]
  outputs, _ = _encode_rows(
      variables, image_paths, rows, _SUM, reduction=None,
      whitening=None, region_options=region_options, pooling_options={},
      max_size=max_size, batch_size=batch_size, dtype=dtype, boxes=boxes,
      rotations=rotations, apply_exif=apply_exif, mesh=mesh,
      num_threads=num_threads, prefetch=prefetch)
  if not outputs:
    raise ValueError(f'no readable image among the {len(rows)} rows to fit '
                     'U^1 on')
  return _fit_reduction([outputs[r][0] for r in rows if r in outputs],
                        [outputs[r][1] for r in rows if r in outputs],
                        k_prime)


def _fit_reduction(summed, region_valid, k_prime):
  """U^1 from per-image eq. (3) descriptors (M, K) and validity (M,)."""
  summed, region_valid = np.stack(summed), np.stack(region_valid)
  return pca.fit(summed.reshape(-1, summed.shape[-1]), k_prime, center=False,
                 mask=region_valid.reshape(-1))  # U^1 of eq. (4)


class _Deferred(NamedTuple):
  """A batch waiting for U^1: its regions, eq. (3) descriptors, and its
  conv5_4 maps when they fit in cache_mib (else None)."""
  rows: list
  sizes: np.ndarray
  maps: tuple | None
  masks: np.ndarray
  valid: np.ndarray
  summed: np.ndarray | None


def encode_methods(variables, image_paths, methods, *, pooling_options,
                   k_prime, region_options=None, max_size=0, batch_size=4,
                   dtype='float32', cache_mib=2048, boxes=None, rotations=None,
                   reduction=None, apply_exif=True, num_threads=4,
                   prefetch=2):
  """Encodes images once for several pooling methods (one VGG19 pass).

  Reads like `encode_rows` (threads, prefetch, buckets) but runs the
  staged chain so that one forward serves every method.

  Args:
    variables: VGG19 variables {'params': ...}.
    image_paths: N image files.
    methods: POOLING keys.
    pooling_options: {'gem_power', 'offdiag_scale', 'rmac_levels'} of the
      baselines and of eq. (5).
    k_prime: K' of eq. (4), the dimension of U^1 when it is fitted here.
    region_options: keywords of regions.propose (backend, n_max, n_min,
      num_clusters, min_cells); needed when a method is regional.
    max_size: longer side images are shrunk to; 0 keeps the original size.
    batch_size: images per jitted forward.
    dtype: VGG19 compute dtype, 'float32' | 'bfloat16'.
    cache_mib: conv5_4 maps kept between the two 'o2' passes, in MiB.
    boxes: float (N, 4) x1 y1 x2 y2 crops at full resolution, or None.
    rotations: N clockwise degrees (multiples of 90), or None.
    reduction: U^1 (eq. 4) for 'o2' (queries: the database's); None fits it
      on these images (eq. 3).
    apply_exif: apply JPEG EXIF orientations when reading (False for the
      Oxford / Paris protocols, datasets.Dataset.apply_exif).
    num_threads: host threads decoding images.
    prefetch: batches decoded ahead of the one being encoded.

  Returns:
    {method: index.Store} over the N' readable images, in input order:
    float32 (N', M, D_store) descriptors (M = 2^L, or 1 for global
    baselines), bool (N', M) validity, masks, U^1 for 'o2', metadata
    'inputs_hash', 'apply_exif', 'reduction_hash', 'rows', 'sizes' and
    'skipped'.

  Raises:
    ValueError: an unknown method, or a regional one without region_options.
  """
  for method in methods:
    _check_method(method, region_options, reduction, fitted_here=True)
  regional = any(POOLING[m].regional for m in methods)
  read = reading.reader(image_paths, boxes=boxes, rotations=rotations,
                 max_size=max_size, apply_exif=apply_exif)
  forward = lambda batch: _forward(  # pylint: disable=g-long-lambda
      variables, batch.rgb, batch.sizes, batch.cells, dtype=dtype) + (
          batch.cells,)
  options = _items(pooling_options)

  def pool(method, maps, masks, valid, reduction):
    return _pool(*maps, masks, valid, reduction, method=method,
                 options=options)

  rows = range(len(image_paths))
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  later = [m for m in methods if POOLING[m].reduced]
  skipped, deferred, outputs = [], [], {m: {} for m in methods}
  cache_bytes = cache_mib * 2 ** 20
  for batch in reading.read_batches(read, rows, image_paths, skipped,
                             batch_size=batch_size, num_threads=num_threads,
                             prefetch=prefetch):
    maps = forward(batch)
    masks, valid = _propose(batch.rgb, batch.sizes, batch.cells, maps[1],
                            region_options if regional else None)
    for method in set(methods) - set(later):
      whole = slice(-1, None) if not POOLING[method].regional else slice(None)
      _collect(outputs[method], batch.rows, batch.sizes, pool(
          POOLING[method], maps, masks[:, whole], valid[:, whole], None),
               valid[:, whole], masks[:, whole])
    if later:
      cache_bytes -= maps[0].nbytes
      deferred.append(_Deferred(
          batch.rows, batch.sizes, maps if cache_bytes >= 0 else None,
          masks, valid, None if reduction is not None else np.asarray(pool(
              _SUM, maps, masks, valid, None))))
  if deferred and reduction is None:
    reduction = _fit_reduction(
        [s for d in deferred for s in d.summed[:len(d.rows)]],
        [v for d in deferred for v in d.valid[:len(d.rows)]], k_prime)
  for batch in tqdm.tqdm(deferred, desc='second order', unit='batch'):
    maps = batch.maps
    if maps is None:  # not cached: run VGG19 again on the same padded batch
      maps = forward(reading.make_batch(
          batch.rows, [read(r) for r in batch.rows], len(batch.sizes)))
    for method in later:
      _collect(outputs[method], batch.rows, batch.sizes, pool(
          POOLING[method], maps, batch.masks, batch.valid, reduction),
               batch.valid, batch.masks)
  num_regions = 2 ** region_options['num_clusters'] if regional else 1
  return {m: _assemble(image_paths, rows, apply_exif, outputs[m], skipped,
                       num_regions if POOLING[m].regional else 1,
                       reduction if POOLING[m].reduced else None)
          for m in methods}


def _assemble(image_paths, rows, apply_exif, outputs, skipped, num_regions,
              reduction):
  """Builds a Store of the encoded rows, in the order of `rows`."""
  rows = [r for r in rows if r in outputs]
  dim = outputs[rows[0]][0].shape[-1] if rows else 0
  grid = np.array([o[2].shape[1:] for o in outputs.values()] or [(0, 0)],
                  np.int32).max(axis=0)
  store = index.Store(
      descriptors=np.zeros((len(rows), num_regions, dim), np.float32),
      valid=np.zeros((len(rows), num_regions), bool),
      masks=np.zeros((len(rows), num_regions, *grid), bool),
      grid=np.zeros((len(rows), 2), np.int32),
      image_paths=tuple(str(image_paths[r]) for r in rows),
      reduction=reduction, metadata={
          'inputs_hash': index.hash_config([str(p) for p in image_paths]),
          'apply_exif': apply_exif,
          'reduction_hash': index.hash_params(reduction),
          'rows': rows, 'sizes': [list(outputs[r][3]) for r in rows],
          'skipped': skipped})
  for position, row in enumerate(rows):
    descriptors, valid, masks, _ = outputs[row]
    store.descriptors[position] = descriptors
    store.valid[position] = valid
    store.masks[position, :, :masks.shape[1], :masks.shape[2]] = masks
    store.grid[position] = masks.shape[1:]
  return store
