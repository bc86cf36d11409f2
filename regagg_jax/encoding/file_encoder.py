"""Image files -> descriptor stores, one pooling method per pass.

  encode_rows    image files (rows of a list) -> records.Store, one pass
  fit_reduction  image files -> U^1 of eq. (4) on eq. (3) descriptors
  fit_regions    U^1 of eq. (4) from per-image eq. (3) descriptors

Images are decoded and resized on `num_threads` host threads (`reading`),
`prefetch` batches ahead of the device, grouped into batches of one shape
bucket (images.bucket_shape) and padded to the batch size with a validity
mask, so each bucket compiles once; each batch runs through `encoder`
(batch_encoder.encode_batch's chain: one jit with the 'jax' region backend).

Second-order descriptors need U^1 (eq. 4), a PCA learnt on first-order
region descriptors (eq. 3): `fit_reduction` learns it, then `encode_rows`
encodes in one pass. Several methods from one VGG19 pass are
`method_encoder`'s (its U^1 is fit_regions'). Batches are read by
passes.read_guarded and each runs under passes.guard_batches (compiled
code dropped before vm.max_map_count is reached; a failed allocation or
compilation is a resources.ResourceError naming the stage, the images
done and the settings to lower) and stores are built by
passes.assemble_store. Nothing here reads a config.
"""

import collections

import numpy as np

from regagg_jax.aggregation import method_table
from regagg_jax.aggregation import pca
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import parallel
from regagg_jax.encoding import passes
from regagg_jax.encoding import resources
from regagg_jax.storage import records


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
  outputs, skipped, in_flight = {}, [], collections.deque()
  _, batches, settings = passes.read_guarded(
    image_paths,
    rows,
    skipped,
    what=desc,
    boxes=boxes,
    rotations=rotations,
    max_size=max_size,
    apply_exif=apply_exif,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
  )
  if mesh is not None:
    if batch_size % mesh.size:
      raise ValueError(
        f'batch_size {batch_size} is not a multiple of the '
        f'{mesh.size} mesh devices'
      )
    variables, reduction, whitening = parallel.replicate(
      mesh, (variables, reduction, whitening)
    )
  for guard, batch in batches:
    with guard:
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
        passes.collect_outputs(outputs, done.rows, done.sizes, *result)
  with resources.stage(
    desc, done=len(outputs), total=len(rows), settings=settings
  ):
    for done, result in in_flight:
      passes.collect_outputs(outputs, done.rows, done.sizes, *result)
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
  store = passes.assemble_store(
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
  return fit_regions(
    [outputs[r][0] for r in rows if r in outputs],
    [outputs[r][1] for r in rows if r in outputs],
    k_prime,
  )


def fit_regions(summed, region_valid, k_prime):
  """U^1 of eq. (4) from per-image eq. (3) descriptors.

  Args:
    summed: per-image float32 (M, K) eq. (3) region descriptors.
    region_valid: per-image bool (M,) validity.
    k_prime: K', the number of components.

  Returns:
    pca.PCAParams, components float32 (K, K'): pca.fit(..., center=False)
    on the valid regions of all images.
  """
  summed, region_valid = np.stack(summed), np.stack(region_valid)
  return pca.fit(
    summed.reshape(-1, summed.shape[-1]),
    k_prime,
    center=False,
    mask=region_valid.reshape(-1),
  )  # U^1 of eq. (4)
