"""Images -> region descriptors: VGG19, alpha / beta, regions, pooling.

  POOLING         pooling.method -> Method (per-image pooling function)
  encode_methods  image files -> {method: index.Store}, one VGG19 pass
  load            one image as the encoder reads it (rotate, crop, shrink)
  limit_lapack_threads  caps the OpenBLAS threads behind jaxlib's QR / SVD

Images are read on the host, grouped into batches of one shape bucket
(images.bucket_shape), padded with a validity mask and run through one
jitted forward (VGG19 conv5_4, eq. 1-2). Second-order descriptors need U^1
(eq. 4), a PCA learnt on first-order region descriptors (eq. 3), before they
can be pooled, so 'o2' is two-pass: pass 1 runs VGG19, alpha, beta and the
region proposal and pools eq. (3); U^1 is fitted on the valid regions of
those images (unless given, e.g. the database's U^1 for queries); pass 2
pools eq. (4-5) from the conv5_4 maps kept in memory (up to cache_mib) or
recomputed (regions are kept). Nothing here reads a config: pipeline passes
the values.
"""

import ctypes
import functools
import glob
import os
from typing import Callable, NamedTuple

from absl import logging
import jax
import numpy as np
import scipy
import tqdm

from regagg_jax import datasets
from regagg_jax import images
from regagg_jax import index
from regagg_jax import pca
from regagg_jax import pooling
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


@functools.partial(jax.jit, static_argnames=('dtype',))
def _forward(variables, rgb, sizes, cells, *, dtype):
  """uint8 (B, H_I, W_I, 3), int32 (B, 2) image sizes, bool (B, H, W) valid
  cells -> features (exact inside each padded image), alpha, beta."""
  features = vgg19.features(variables, vgg19.preprocess(rgb), sizes,
                            dtype=dtype)
  alpha = jax.vmap(weighting.spatial_weights)(features, cells)  # eq. (1)
  beta = jax.vmap(weighting.channel_weights)(features, cells)  # eq. (2)
  return features, alpha, beta


@functools.partial(jax.jit, static_argnames=('method', 'options'))
def _pool(features, alpha, beta, cells, masks, region_valid, reduction, *,
          method, options):
  pool = functools.partial(method.pool, reduction=reduction,
                           options=dict(options))
  return jax.vmap(pool)(features, alpha, beta, cells, masks, region_valid)


def load(path, *, box=None, rotation=0, max_size=0, apply_exif=True):
  """Reads one image: rotate, crop at full resolution, then shrink.

  Args:
    path: image file.
    box: x1 y1 x2 y2 crop in pixels of the (rotated) image, or None.
    rotation: clockwise degrees, a multiple of 90.
    max_size: longer side to shrink to; 0 keeps the original size.
    apply_exif: apply a JPEG's EXIF orientation (images.load_image); box
      and rotation refer to the image after it.

  Returns:
    uint8 (H_I, W_I, 3) RGB image.

  Raises:
    images.ImageError: unreadable, or the crop is empty or too small.
  """
  image = images.load_image(path, apply_exif=apply_exif)
  if rotation:
    image = datasets.rotate_image(image, rotation)
  if box is not None:
    try:
      image = datasets.crop_query(image, box)
    except ValueError as error:
      raise images.ImageError(f'{path}: {error}') from error
    if min(image.shape[:2]) < images.MIN_SIDE:
      raise images.ImageError(f'{path}: crop {list(box)} is smaller than '
                              f'{images.MIN_SIDE} px')
  if max_size and max(image.shape[:2]) > max_size:
    image = images.resize_longer_side(image, max_size)
  return image


class _Batch(NamedTuple):
  indices: list  # rows of the input list
  images: list  # uint8 (H_I, W_I, 3), unpadded
  rgb: np.ndarray  # uint8 (B, H_b, W_b, 3), padded to the batch size
  sizes: np.ndarray  # int32 (B, 2) image (H_I, W_I), zeros for padding
  cells: np.ndarray  # bool (B, H, W) valid feature cells


def _batch(rows, pictures, batch_size):
  height, width = images.bucket_shape(*np.max(
      [p.shape[:2] for p in pictures], axis=0))
  rgb, cells = images.pad_batch(pictures, height=height, width=width)
  extra = batch_size - len(pictures)
  rgb = np.concatenate([rgb, np.zeros((extra,) + rgb.shape[1:], np.uint8)])
  cells = np.concatenate([cells, np.zeros((extra,) + cells.shape[1:], bool)])
  sizes = np.zeros((batch_size, 2), np.int32)
  sizes[:len(pictures)] = [p.shape[:2] for p in pictures]
  return _Batch(list(rows), list(pictures), rgb, sizes, cells)


def _batches(read, image_paths, skipped, batch_size):
  """Yields _Batch of one shape bucket each, skipping unreadable images."""
  pending = {}
  for row in tqdm.tqdm(range(len(image_paths)), desc='encoding',
                       unit='image'):
    try:
      image = read(row)
    except images.ImageError as error:
      logging.warning('skipping unreadable image: %s', error)
      skipped.append([str(image_paths[row]), str(error)])
      continue
    bucket = images.bucket_shape(*image.shape[:2])
    pending.setdefault(bucket, []).append((row, image))
    if len(pending[bucket]) == batch_size:
      yield _batch(*zip(*pending.pop(bucket)), batch_size)
  for items in pending.values():
    yield _batch(*zip(*items), batch_size)


def _propose(batch, alpha, region_options):
  """Region masks bool (B, M, H, W) and validity (B, M) of a batch."""
  cells = batch.cells
  if region_options is None:
    return cells[:, None], cells.any(axis=(1, 2))[:, None]
  if region_options['backend'] == 'jax':  # detector jitted over the batch
    masks, valid = (np.asarray(a) for a in regions.propose_batch(
        batch.rgb, alpha, cells, batch.sizes, **region_options))
  else:
    count = 2 ** region_options['num_clusters']
    masks = np.zeros((len(cells), count) + cells.shape[1:], bool)
    valid = np.zeros((len(cells), count), bool)
    for slot, image in enumerate(batch.images):
      height, width = images.feature_shape(*image.shape[:2])
      masks[slot, :, :height, :width], valid[slot] = regions.propose(
          image, np.asarray(alpha[slot, :height, :width]), **region_options)
  return masks, valid


def _collect(outputs, rows, sizes, descriptors, masks, valid):
  """Keeps each real image's (descriptors, valid, masks on its grid, size)."""
  for slot, row in enumerate(rows):
    height_i, width_i = (int(s) for s in sizes[slot])
    height, width = images.feature_shape(height_i, width_i)
    outputs[row] = (descriptors[slot], valid[slot],
                    masks[slot, :, :height, :width], (height_i, width_i))


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
                   reduction=None, apply_exif=True):
  """Encodes images once for several pooling methods (one VGG19 pass).

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
    if method not in POOLING:
      raise ValueError(f'pooling method must be one of {sorted(POOLING)}, '
                       f'got {method!r}')
  regional = any(POOLING[m].regional for m in methods)
  if regional and region_options is None:
    raise ValueError(f'regional methods {list(methods)} need region_options')
  read = lambda row: load(  # pylint: disable=g-long-lambda
      image_paths[row], box=None if boxes is None else boxes[row],
      rotation=0 if rotations is None else rotations[row],
      max_size=max_size, apply_exif=apply_exif)
  forward = lambda batch: _forward(  # pylint: disable=g-long-lambda
      variables, batch.rgb, batch.sizes, batch.cells, dtype=dtype) + (
          batch.cells,)
  options = tuple(sorted(pooling_options.items()))

  def pool(method, maps, masks, valid, reduction):
    return np.asarray(_pool(*maps, masks, valid, reduction, method=method,
                            options=options))

  later = [m for m in methods if POOLING[m].reduced]
  skipped, deferred, outputs = [], [], {m: {} for m in methods}
  cache_bytes = cache_mib * 2 ** 20
  for batch in _batches(read, image_paths, skipped, batch_size):
    maps = forward(batch)
    masks, valid = _propose(batch, maps[1],
                            region_options if regional else None)
    for method in set(methods) - set(later):
      whole = slice(-1, None) if not POOLING[method].regional else slice(None)
      _collect(outputs[method], batch.indices, batch.sizes, pool(
          POOLING[method], maps, masks[:, whole], valid[:, whole], None),
               masks[:, whole], valid[:, whole])
    if later:
      cache_bytes -= maps[0].nbytes
      deferred.append(_Deferred(
          batch.indices, batch.sizes, maps if cache_bytes >= 0 else None,
          masks, valid, None if reduction is not None else pool(
              _SUM, maps, masks, valid, None)))
  if deferred and reduction is None:
    summed = np.concatenate([d.summed[:len(d.rows)] for d in deferred])
    region_valid = np.concatenate([d.valid[:len(d.rows)] for d in deferred])
    reduction = pca.fit(summed.reshape(-1, summed.shape[-1]), k_prime,
                        center=False,
                        mask=region_valid.reshape(-1))  # U^1 of eq. (4)
  for batch in tqdm.tqdm(deferred, desc='second order', unit='batch'):
    maps = batch.maps
    if maps is None:  # not cached: run VGG19 again on the same padded batch
      maps = forward(_batch(batch.rows, [read(r) for r in batch.rows],
                            batch_size))
    for method in later:
      _collect(outputs[method], batch.rows, batch.sizes, pool(
          POOLING[method], maps, batch.masks, batch.valid, reduction),
               batch.masks, batch.valid)
  num_regions = 2 ** region_options['num_clusters'] if regional else 1
  return {m: _assemble(image_paths, apply_exif, outputs[m], skipped,
                       num_regions if POOLING[m].regional else 1,
                       reduction if POOLING[m].reduced else None)
          for m in methods}


def _assemble(image_paths, apply_exif, outputs, skipped, num_regions,
              reduction):
  """Builds a Store in input order from {row: per-image outputs}."""
  rows = sorted(outputs)
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
