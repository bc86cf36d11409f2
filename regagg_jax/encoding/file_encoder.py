"""Image files -> descriptor stores: the encoder run over a list of images.

  encode_rows     image files (rows of a list) -> records.Store, one pass
  fit_reduction   image files -> U^1 of eq. (4) on eq. (3) descriptors
  encode_methods  image files -> {method: records.Store}, one VGG19 pass

Images are decoded and resized on `num_threads` host threads (`reading`),
`prefetch` batches ahead of the device, grouped into batches of one shape
bucket (images.bucket_shape) and padded to the batch size with a validity
mask, so each bucket compiles once; each batch runs through `encoder`
(batch_encoder.encode_batch's chain: one jit with the 'jax' region backend).

Second-order descriptors need U^1 (eq. 4), a PCA learnt on first-order
region descriptors (eq. 3): `fit_reduction` learns it, then `encode_rows`
encodes in one pass. `encode_methods` (the demo and pipeline) pools several
methods from one VGG19 pass and is two-pass for 'o2': pass 1 pools eq. (3)
and fits U^1 (unless given); pass 2 pools eq. (4-5) from the conv5_4 maps
kept in memory (up to cache_mib) or recomputed. Nothing here reads a config.
"""

import collections
from typing import NamedTuple

import numpy as np
import tqdm

from regagg_jax.encoding import batch_encoder
from regagg_jax.features import images
from regagg_jax.storage import records
from regagg_jax.encoding import parallel
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import method_table
from regagg_jax.features import reading


def _collect(outputs, rows, sizes, descriptors, valid, masks):
  """Keeps each real image's (descriptors, valid, masks on its grid, size)."""
  descriptors, valid, masks = (
    np.asarray(a) for a in (descriptors, valid, masks)
  )
  for slot, row in enumerate(rows):
    height_i, width_i = (int(s) for s in sizes[slot])
    height, width = images.feature_shape(height_i, width_i)
    outputs[row] = (
      descriptors[slot],
      valid[slot],
      masks[slot, :, :height, :width],
      (height_i, width_i),
    )


def _encode_rows(
  variables,
  image_paths,
  rows,
  method,
  *,
  reduction,
  whitening,
  region_options,
  pooling_options,
  max_size,
  batch_size,
  dtype,
  boxes,
  rotations,
  apply_exif,
  mesh,
  num_threads,
  prefetch,
  desc,
):
  """{row: per-image outputs} and skipped [path, reason] of one pass.

  A batch's outputs are fetched after the next batch is dispatched, so the
  device runs while the host collects and pads.
  """
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  if mesh is not None:
    if batch_size % mesh.size:
      raise ValueError(
        f'batch_size {batch_size} is not a multiple of the '
        f'{mesh.size} mesh devices'
      )
    variables, reduction, whitening = parallel.replicate(
      mesh, (variables, reduction, whitening)
    )
  read = reading.reader(
    image_paths,
    boxes=boxes,
    rotations=rotations,
    max_size=max_size,
    apply_exif=apply_exif,
  )
  outputs, skipped, in_flight = {}, [], collections.deque()
  for batch in reading.read_batches(
    read,
    rows,
    image_paths,
    skipped,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
    desc=desc,
  ):
    arrays = (batch.rgb, batch.sizes, batch.cells)
    if mesh is not None:
      arrays = parallel.shard_batch(mesh, arrays)
    in_flight.append(
      (
        batch,
        batch_encoder.run_batch(
          variables,
          *arrays,
          reduction,
          whitening,
          method=method,
          dtype=dtype,
          region_options=region_options,
          pooling_options=pooling_options,
          staged=False,
          mesh=mesh,
        ),
      )
    )
    if len(in_flight) > 1:  # fetch the previous batch while this one runs
      done, result = in_flight.popleft()
      _collect(outputs, done.rows, done.sizes, *result)
  for done, result in in_flight:
    _collect(outputs, done.rows, done.sizes, *result)
  return outputs, skipped


def encode_rows(
  variables,
  image_paths,
  rows,
  method,
  *,
  region_options,
  pooling_options,
  reduction=None,
  whitening=None,
  max_size=0,
  batch_size=4,
  dtype='float32',
  boxes=None,
  rotations=None,
  apply_exif=True,
  mesh=None,
  num_threads=4,
  prefetch=2,
):
  """Encodes the images image_paths[r], r in rows, in one pass.

  Images are decoded and resized on num_threads host threads, prefetch
  batches ahead, grouped into shape buckets, padded to batch_size and run
  through batch_encoder.encode_batch's chain (one jit with the 'jax' backend,
  staged with 'hesaff'). Unreadable images are skipped, logged and reported.

  Args:
    variables: VGG19 variables {'params': ...}.
    image_paths: all N image files (rows index it).
    rows: absolute row numbers to encode, without repeats.
    method: method_table.POOLING key.
    region_options: keywords of proposal.propose_batch (backend, n_max,
      n_min, num_clusters, min_cells); needed by regional methods.
    pooling_options: {'gem_power', 'offdiag_scale', 'log_method',
      'rmac_levels'}.
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
    records.Store of the readable rows in the order of `rows`: float32
    (N', M, D) descriptors, bool (N', M) validity, masks, U^1 for 'o2',
    metadata 'rows', 'sizes', 'skipped' ([path, reason]), 'reduction_hash',
    'whitening_hash', 'apply_exif', 'inputs_hash'.

  Raises:
    ValueError: unknown method, missing options or U^1, bad rows, sizes or
      counts.
  """
  chosen = method_table.check_method(method, region_options, reduction)
  rows = [int(row) for row in rows]
  outputs, skipped = _encode_rows(
    variables,
    image_paths,
    rows,
    chosen,
    reduction=reduction if chosen.reduced else None,
    whitening=whitening,
    region_options=region_options,
    pooling_options=pooling_options,
    max_size=max_size,
    batch_size=batch_size,
    dtype=dtype,
    boxes=boxes,
    rotations=rotations,
    apply_exif=apply_exif,
    mesh=mesh,
    num_threads=num_threads,
    prefetch=prefetch,
    desc=f'encoding ({method})',
  )
  num_regions = 2**region_options.num_clusters if chosen.regional else 1
  store = _assemble(
    image_paths,
    rows,
    apply_exif,
    outputs,
    skipped,
    num_regions,
    reduction if chosen.reduced else None,
  )
  store.metadata['whitening_hash'] = records.hash_params(whitening)
  return store


def fit_reduction(
  variables,
  image_paths,
  rows,
  *,
  k_prime,
  region_options,
  max_size=0,
  batch_size=4,
  dtype='float32',
  boxes=None,
  rotations=None,
  apply_exif=True,
  mesh=None,
  num_threads=4,
  prefetch=2,
):
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
    variables,
    image_paths,
    rows,
    method_table.SUM,
    reduction=None,
    whitening=None,
    region_options=region_options,
    pooling_options=method_table.PoolingOptions(),
    max_size=max_size,
    batch_size=batch_size,
    dtype=dtype,
    boxes=boxes,
    rotations=rotations,
    apply_exif=apply_exif,
    mesh=mesh,
    num_threads=num_threads,
    prefetch=prefetch,
    desc='fitting U^1 (eq. 4): eq. 3 regions',
  )
  if not outputs:
    raise ValueError(
      f'no readable image among the {len(rows)} rows to fit U^1 on'
    )
  return _fit_reduction(
    [outputs[r][0] for r in rows if r in outputs],
    [outputs[r][1] for r in rows if r in outputs],
    k_prime,
  )


def _fit_reduction(summed, region_valid, k_prime):
  """U^1 from per-image eq. (3) descriptors (M, K) and validity (M,)."""
  summed, region_valid = np.stack(summed), np.stack(region_valid)
  return pca.fit(
    summed.reshape(-1, summed.shape[-1]),
    k_prime,
    center=False,
    mask=region_valid.reshape(-1),
  )  # U^1 of eq. (4)


class _Deferred(NamedTuple):
  """A batch waiting for U^1: its regions, eq. (3) descriptors, and its
  conv5_4 maps when they fit in cache_mib (else None)."""

  rows: list
  sizes: np.ndarray
  maps: tuple | None
  masks: np.ndarray
  valid: np.ndarray
  summed: np.ndarray | None


def encode_methods(
  variables,
  image_paths,
  methods,
  *,
  pooling_options,
  k_prime,
  region_options=None,
  max_size=0,
  batch_size=4,
  dtype='float32',
  cache_mib=2048,
  boxes=None,
  rotations=None,
  reduction=None,
  apply_exif=True,
  num_threads=4,
  prefetch=2,
):
  """Encodes images once for several pooling methods (one VGG19 pass).

  Reads like `encode_rows` (threads, prefetch, buckets) but runs the
  staged chain so that one forward serves every method.

  Args:
    variables: VGG19 variables {'params': ...}.
    image_paths: N image files.
    methods: method_table.POOLING keys.
    pooling_options: {'gem_power', 'offdiag_scale', 'log_method',
      'rmac_levels'} of the baselines and of eq. (5).
    k_prime: K' of eq. (4), the dimension of U^1 when it is fitted here.
    region_options: keywords of proposal.propose (backend, n_max, n_min,
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
    {method: records.Store} over the N' readable images, in input order:
    float32 (N', M, D_store) descriptors (M = 2^L, or 1 for global
    baselines), bool (N', M) validity, masks, U^1 for 'o2', metadata
    'inputs_hash', 'apply_exif', 'reduction_hash', 'rows', 'sizes' and
    'skipped'.

  Raises:
    ValueError: an unknown method, or a regional one without region_options.
  """
  for method in methods:
    method_table.check_method(
      method, region_options, reduction, fitted_here=True
    )
  regional = any(method_table.POOLING[m].regional for m in methods)
  read = reading.reader(
    image_paths,
    boxes=boxes,
    rotations=rotations,
    max_size=max_size,
    apply_exif=apply_exif,
  )
  forward = lambda batch: (  # pylint: disable=g-long-lambda
    batch_encoder.staged_forward(
      variables, batch.rgb, batch.sizes, batch.cells, dtype=dtype
    )
    + (batch.cells,)
  )

  def pool(method, maps, masks, valid, reduction):
    return batch_encoder.staged_pool(
      *maps, masks, valid, reduction, method=method, options=pooling_options
    )

  rows = range(len(image_paths))
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  later = [m for m in methods if method_table.POOLING[m].reduced]
  skipped, deferred, outputs = [], [], {m: {} for m in methods}
  cache_bytes = cache_mib * 2**20
  for batch in reading.read_batches(
    read,
    rows,
    image_paths,
    skipped,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
    desc=f'encoding ({", ".join(methods)})',
  ):
    maps = forward(batch)
    masks, valid = batch_encoder.propose_regions(
      batch.rgb,
      batch.sizes,
      batch.cells,
      maps[1],
      region_options if regional else None,
    )
    for method in set(methods) - set(later):
      whole = (
        slice(-1, None)
        if not method_table.POOLING[method].regional
        else slice(None)
      )
      _collect(
        outputs[method],
        batch.rows,
        batch.sizes,
        pool(
          method_table.POOLING[method],
          maps,
          masks[:, whole],
          valid[:, whole],
          None,
        ),
        valid[:, whole],
        masks[:, whole],
      )
    if later:
      cache_bytes -= maps[0].nbytes
      deferred.append(
        _Deferred(
          batch.rows,
          batch.sizes,
          maps if cache_bytes >= 0 else None,
          masks,
          valid,
          None
          if reduction is not None
          else np.asarray(pool(method_table.SUM, maps, masks, valid, None)),
        )
      )
  if deferred and reduction is None:
    reduction = _fit_reduction(
      [s for d in deferred for s in d.summed[: len(d.rows)]],
      [v for d in deferred for v in d.valid[: len(d.rows)]],
      k_prime,
    )
  for batch in tqdm.tqdm(
    deferred, desc='second order (eq. 4-5, cached conv5_4)', unit='batch'
  ):
    maps = batch.maps
    if maps is None:  # not cached: run VGG19 again on the same padded batch
      maps = forward(
        reading.make_batch(
          batch.rows, [read(r) for r in batch.rows], len(batch.sizes)
        )
      )
    for method in later:
      _collect(
        outputs[method],
        batch.rows,
        batch.sizes,
        pool(
          method_table.POOLING[method],
          maps,
          batch.masks,
          batch.valid,
          reduction,
        ),
        batch.valid,
        batch.masks,
      )
  num_regions = 2**region_options.num_clusters if regional else 1
  return {
    m: _assemble(
      image_paths,
      rows,
      apply_exif,
      outputs[m],
      skipped,
      num_regions if method_table.POOLING[m].regional else 1,
      reduction if method_table.POOLING[m].reduced else None,
    )
    for m in methods
  }


def _assemble(
  image_paths, rows, apply_exif, outputs, skipped, num_regions, reduction
):
  """Builds a Store of the encoded rows, in the order of `rows`."""
  rows = [r for r in rows if r in outputs]
  dim = outputs[rows[0]][0].shape[-1] if rows else 0
  grid = np.array(
    [o[2].shape[1:] for o in outputs.values()] or [(0, 0)], np.int32
  ).max(axis=0)
  store = records.Store(
    descriptors=np.zeros((len(rows), num_regions, dim), np.float32),
    valid=np.zeros((len(rows), num_regions), bool),
    masks=np.zeros((len(rows), num_regions, *grid), bool),
    grid=np.zeros((len(rows), 2), np.int32),
    image_paths=tuple(str(image_paths[r]) for r in rows),
    reduction=reduction,
    metadata={
      'inputs_hash': records.hash_config([str(p) for p in image_paths]),
      'apply_exif': apply_exif,
      'reduction_hash': records.hash_params(reduction),
      'rows': rows,
      'sizes': [list(outputs[r][3]) for r in rows],
      'skipped': skipped,
    },
  )
  for position, row in enumerate(rows):
    descriptors, valid, masks, _ = outputs[row]
    store.descriptors[position] = descriptors
    store.valid[position] = valid
    store.masks[position, :, : masks.shape[1], : masks.shape[2]] = masks
    store.grid[position] = masks.shape[1:]
  return store
