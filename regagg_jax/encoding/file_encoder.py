"""Image files -> descriptor stores: the encoder run over a list of images.

  encode_rows     image files (rows of a list) -> records.Store, one pass
  fit_reduction   image files -> U^1 of eq. (4) on eq. (3) descriptors
  encode_methods  image files -> {method: records.Store}, one VGG19 pass:
                  pool_first, fit_sums, pool_reduced (with a MapsCache),
                  which pipeline.encode_methods also runs shard by shard

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
kept in memory (up to cache_mib) or recomputed. Before each batch the
process's memory maps are checked (resources.release_compiled: compiled
code is dropped before vm.max_map_count is reached), and a failed
allocation or compilation stops the run with a resources.ResourceError
naming the stage, the images done and the settings to lower. Nothing here
reads a config.
"""

import collections
import itertools
from typing import NamedTuple

import numpy as np
import tqdm

from regagg_jax.encoding import batch_encoder
from regagg_jax.features import images
from regagg_jax.storage import records
from regagg_jax.encoding import parallel
from regagg_jax.encoding import resources
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import method_table
from regagg_jax.features import reading


def _collect(outputs, rows, sizes, descriptors, valid, masks):
  """Keeps each real image's (descriptors, valid, masks on its grid, size)."""
  descriptors, valid, masks = (
    np.asarray(a) for a in (descriptors, valid, masks)
  )
  for slot, row in enumerate(rows):  # copies: the batch's buffers are freed
    height_i, width_i = (int(s) for s in sizes[slot])
    height, width = images.feature_shape(height_i, width_i)
    outputs[row] = (
      np.array(descriptors[slot]),
      np.array(valid[slot]),
      np.array(masks[slot, :, :height, :width]),
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
  batches = reading.read_batches(
    read,
    rows,
    image_paths,
    skipped,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
    desc=desc,
  )
  settings = (
    f'features.batch_size ({batch_size}), features.max_size ({max_size})'
  )
  for guard, batch in _guarded(batches, desc, len(rows), settings):
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
        _collect(outputs, done.rows, done.sizes, *result)
  with resources.stage(
    desc, done=len(outputs), total=len(rows), settings=settings
  ):
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
  """A pass-1 batch kept for pass 2 (eq. 4-5): its regions, and its conv5_4
  maps when they fit in the cache (else None: VGG19 runs again)."""

  rows: list
  sizes: np.ndarray
  maps: tuple | None
  masks: np.ndarray
  valid: np.ndarray


class MapsCache:
  """Pass-1 batches (regions, conv5_4 maps up to `mib` MiB) for pass 2, and
  the rows pass 1 could not read ({row: [path, reason]})."""

  def __init__(self, mib):
    self.budget, self.batches, self.skipped = mib * 2**20, [], {}

  def add(self, rows, sizes, maps, masks, valid):
    kept = maps[0].nbytes <= self.budget
    self.budget -= maps[0].nbytes if kept else 0
    self.batches.append(
      _Deferred(list(rows), sizes, maps if kept else None, masks, valid)
    )

  def take(self, rows):
    """Removes and returns the batches whose rows all lie in `rows`."""
    wanted = set(rows)
    taken = [b for b in self.batches if wanted.issuperset(b.rows)]
    self.batches = [b for b in self.batches if not wanted.issuperset(b.rows)]
    self.budget += sum(b.maps[0].nbytes for b in taken if b.maps is not None)
    return taken


def _staged(variables, image_paths, *, dtype, pooling_options, **reading_args):
  """(read, forward, pool) of the staged multi-method chain."""
  read = reading.reader(image_paths, **reading_args)

  def forward(batch):
    return batch_encoder.staged_forward(
      variables, batch.rgb, batch.sizes, batch.cells, dtype=dtype
    ) + (batch.cells,)

  def pool(method, maps, masks, valid, reduction):
    return batch_encoder.staged_pool(
      *maps, masks, valid, reduction, method=method, options=pooling_options
    )

  return read, forward, pool


def _guarded(batches, what, total, settings):
  """Yields (guard, batch): compiled code is released first when memory
  maps crowd (resources.release_compiled), and the batch's work runs
  `with guard` (resources.stage: a failed allocation is a ResourceError)."""
  done = 0
  for batch in batches:
    resources.release_compiled(done=done, what=what)
    yield (
      resources.stage(what, done=done, total=total, settings=settings),
      batch,
    )
    done += len(batch.rows)


def pool_first(
  variables,
  image_paths,
  rows,
  methods,
  *,
  pooling_options,
  region_options=None,
  max_size=0,
  batch_size=4,
  dtype='float32',
  boxes=None,
  rotations=None,
  apply_exif=True,
  num_threads=4,
  prefetch=2,
  cache=None,
  sums=False,
):
  """Pass 1 of `encode_methods` over image_paths[r], r in rows.

  One staged VGG19 forward and region proposal per batch serves every
  method that needs no U^1; the batch's regions and maps go to `cache` for
  pass 2 (`pool_reduced`).

  Args:
    variables, image_paths, pooling_options, region_options, max_size,
      batch_size, dtype, boxes, rotations, apply_exif, num_threads,
      prefetch: as in `encode_methods`.
    rows: the rows to encode, without repeats.
    methods: method_table.POOLING keys (reduced ones are left to pass 2).
    cache: MapsCache to keep the batches in, or None.
    sums: also pool eq. (3), what U^1 (eq. 4) is fitted on (`fit_sums`).

  Returns:
    ({method: records.Store} of the methods that need no U^1, records.Store
    of eq. (3) descriptors or None).
  """
  rows = [int(row) for row in rows]
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  read, forward, pool = _staged(
    variables,
    image_paths,
    dtype=dtype,
    pooling_options=pooling_options,
    boxes=boxes,
    rotations=rotations,
    max_size=max_size,
    apply_exif=apply_exif,
  )
  regional = any(method_table.POOLING[m].regional for m in methods)
  early = [m for m in methods if not method_table.POOLING[m].reduced]
  pools = {m: method_table.POOLING[m] for m in early}
  if sums:
    pools[None] = method_table.SUM
  skipped, outputs = [], {m: {} for m in pools}
  what = f'encoding ({", ".join(methods)})'
  batches = reading.read_batches(
    read,
    rows,
    image_paths,
    skipped,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
    desc=what,
  )
  settings = (
    f'features.batch_size ({batch_size}), features.max_size ({max_size}) '
    'or features.cache_mib'
  )
  for guard, batch in _guarded(batches, what, len(rows), settings):
    with guard:
      maps = forward(batch)
      masks, valid = batch_encoder.propose_regions(
        batch.rgb,
        batch.sizes,
        batch.cells,
        maps[1],
        region_options if regional else None,
      )
      for key, method in pools.items():
        whole = slice(None) if method.regional else slice(-1, None)
        _collect(
          outputs[key],
          batch.rows,
          batch.sizes,
          pool(method, maps, masks[:, whole], valid[:, whole], None),
          valid[:, whole],
          masks[:, whole],
        )
      if cache is not None:
        cache.add(batch.rows, batch.sizes, maps, masks, valid)
  if cache is not None:
    cache.skipped.update(
      {r: s for r, s in zip(_skipped_rows(image_paths, skipped), skipped)}
    )
  num_regions = 2**region_options.num_clusters if regional else 1
  stores = {
    key: _assemble(
      image_paths,
      rows,
      apply_exif,
      outputs[key],
      skipped,
      num_regions if method.regional else 1,
      None,
    )
    for key, method in pools.items()
  }
  return {m: stores[m] for m in early}, stores.get(None)


def _skipped_rows(image_paths, skipped):
  """The rows of the [path, reason] pairs in `skipped`."""
  where = {str(p): r for r, p in enumerate(image_paths)}
  return [where[path] for path, _ in skipped]


def fit_sums(sums, k_prime):
  """U^1 of eq. (4) from a store of eq. (3) descriptors (`pool_first`).

  Raises:
    ValueError: the store holds no image.
  """
  if not len(sums.descriptors):
    raise ValueError('no readable image to fit U^1 (eq. 4) on')
  return _fit_reduction(list(sums.descriptors), list(sums.valid), k_prime)


def pool_reduced(
  variables,
  image_paths,
  rows,
  methods,
  *,
  reduction,
  pooling_options,
  region_options=None,
  max_size=0,
  batch_size=4,
  dtype='float32',
  boxes=None,
  rotations=None,
  apply_exif=True,
  num_threads=4,
  prefetch=2,
  cache=None,
):
  """Pass 2 of `encode_methods`: the methods that need U^1 (eq. 4-5).

  Batches of these rows kept in `cache` by `pool_first` are taken from it
  (their regions, and their maps unless the cache was full: VGG19 runs
  again); rows without one (a resumed run) are read, forwarded and
  proposed again.

  Args:
    reduction: U^1 (eq. 4).
    Others: as in `pool_first`.

  Returns:
    {method: records.Store}.
  """
  rows = [int(row) for row in rows]
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  read, forward, pool = _staged(
    variables,
    image_paths,
    dtype=dtype,
    pooling_options=pooling_options,
    boxes=boxes,
    rotations=rotations,
    max_size=max_size,
    apply_exif=apply_exif,
  )
  taken = cache.take(rows) if cache is not None else []
  known = cache.skipped if cache is not None else {}
  covered = {r for batch in taken for r in batch.rows} | set(known)
  skipped = [known[r] for r in rows if r in known]
  fresh = reading.read_batches(
    read,
    [r for r in rows if r not in covered],
    image_paths,
    skipped,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
    desc='second order (eq. 4-5): read again',
  )
  cached = tqdm.tqdm(
    taken, desc='second order (eq. 4-5, cached conv5_4)', unit='batch'
  )
  outputs = {m: {} for m in methods}
  settings = (
    f'features.batch_size ({batch_size}), features.max_size ({max_size}) '
    'or features.cache_mib'
  )
  what = f'second order (eq. 4-5) of {", ".join(methods)}'
  for guard, batch in _guarded(
    itertools.chain(cached, fresh), what, len(rows), settings
  ):
    with guard:
      if isinstance(batch, _Deferred):
        _, sizes, maps, masks, valid = batch
        if maps is None:  # not cached: VGG19 again on the same padded batch
          maps = forward(
            reading.make_batch(
              batch.rows, [read(r) for r in batch.rows], len(batch.sizes)
            )
          )
      else:
        sizes, maps = batch.sizes, forward(batch)
        masks, valid = batch_encoder.propose_regions(
          batch.rgb, batch.sizes, batch.cells, maps[1], region_options
        )
      for method in methods:
        _collect(
          outputs[method],
          batch.rows,
          sizes,
          pool(method_table.POOLING[method], maps, masks, valid, reduction),
          valid,
          masks,
        )
  num_regions = 2**region_options.num_clusters
  return {
    m: _assemble(
      image_paths,
      rows,
      apply_exif,
      outputs[m],
      skipped,
      num_regions,
      reduction,
    )
    for m in methods
  }


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
  staged chain so that one forward serves every method: `pool_first`,
  then for 'o2' `fit_sums` (unless U^1 is given) and `pool_reduced` from
  the cached conv5_4 maps. pipeline.encode_methods runs the same passes
  shard by shard into resumable stores.

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
    resources.ResourceError: memory or memory maps ran out (naming the
      stage, the images done and the settings to lower).
  """
  check_methods(methods, region_options, reduction)
  options = dict(
    pooling_options=pooling_options,
    region_options=region_options,
    max_size=max_size,
    batch_size=batch_size,
    dtype=dtype,
    boxes=boxes,
    rotations=rotations,
    apply_exif=apply_exif,
    num_threads=num_threads,
    prefetch=prefetch,
  )
  rows = range(len(image_paths))
  later = [m for m in methods if method_table.POOLING[m].reduced]
  cache = MapsCache(cache_mib) if later else None
  stores, sums = pool_first(
    variables,
    image_paths,
    rows,
    methods,
    cache=cache,
    sums=bool(later) and reduction is None,
    **options,
  )
  if later:
    if reduction is None:
      reduction = fit_sums(sums, k_prime)
    stores.update(
      pool_reduced(
        variables,
        image_paths,
        rows,
        later,
        reduction=reduction,
        cache=cache,
        **options,
      )
    )
  return {m: stores[m] for m in methods}


def check_methods(methods, region_options, reduction):
  """Refuses unknown methods and regional ones without region_options
  (U^1 may be fitted here)."""
  for method in methods:
    method_table.check_method(
      method, region_options, reduction, fitted_here=True
    )


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
