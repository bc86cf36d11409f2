"""Image files -> {method: descriptor store}, one VGG19 pass for all.

  encode_methods  image files -> {method: records.Store}: pool_first, then
                  for 'o2' fit_sums and pool_reduced, which
                  pipeline.encode_methods also runs shard by shard
  pool_first      pass 1: the methods that need no U^1, eq. (3) sums, and
                  the batches kept in a MapsCache for pass 2
  fit_sums        U^1 of eq. (4) from pass 1's eq. (3) descriptors
  pool_reduced    pass 2: the methods that need U^1 (eq. 4-5)
  MapsCache       pass-1 regions and conv5_4 maps (up to cache_mib) kept
                  for pass 2
  check_methods   refuses unknown methods before any image is read
  PassOptions     how every pass reads, proposes and pools: one value

Images are read as in file_encoder (passes.read_guarded: threads,
prefetch, shape buckets), but the chain is batch_encoder's staged one, so one
forward serves every method.
'o2' is two-pass: pass 1 pools eq. (3) and fits U^1 (unless given); pass 2
pools eq. (4-5) from the conv5_4 maps kept in memory (up to cache_mib) or
recomputed. Stores are built by passes.assemble_store and each batch
runs under passes.guard_batches (resources.ResourceError naming the
stage, the images done and the settings to lower). Nothing here reads a
config.
"""

from typing import NamedTuple

import numpy as np
import tqdm

from regagg_jax.aggregation import method_table
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import passes
from regagg_jax.features import reading
from regagg_jax.regions import proposal


class PassOptions(NamedTuple):
  """How `pool_first` and `pool_reduced` read, propose and pool; hashable,
  one value for both passes (and pipeline.encode_methods' shards).

  Attributes:
    pooling_options: method_table.PoolingOptions of the baselines and of
      eq. (5).
    region_options: proposal.RegionOptions (backend, N_max, N_min, L,
      min_cells); needed when a method is regional, else None.
    max_size: longer side images are shrunk to; 0 keeps the original size.
    batch_size: images per jitted forward.
    dtype: VGG19 compute dtype, 'float32' | 'bfloat16'.
    apply_exif: apply JPEG EXIF orientations when reading (False for the
      Oxford / Paris protocols, datasets.Dataset.apply_exif).
    num_threads: host threads decoding images.
    prefetch: batches decoded ahead of the one being encoded.
  """

  pooling_options: method_table.PoolingOptions
  region_options: proposal.RegionOptions | None = None
  max_size: int = 0
  batch_size: int = 4
  dtype: str = 'float32'
  apply_exif: bool = True
  num_threads: int = 4
  prefetch: int = 2


def _check_options(options):
  if not isinstance(options, PassOptions):
    raise TypeError(
      'options must be a method_encoder.PassOptions, got '
      f'{type(options).__name__}'
    )


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


def _read_guarded(image_paths, rows, skipped, options, boxes, rotations, **how):
  """passes.read_guarded with the options' reading settings; a
  ResourceError also names features.cache_mib."""
  return passes.read_guarded(
    image_paths,
    rows,
    skipped,
    boxes=boxes,
    rotations=rotations,
    max_size=options.max_size,
    apply_exif=options.apply_exif,
    batch_size=options.batch_size,
    num_threads=options.num_threads,
    prefetch=options.prefetch,
    also_lower='features.cache_mib',
    **how,
  )


def _staged(variables, options):
  """(forward, pool) of the staged multi-method chain."""

  def forward(batch):
    return batch_encoder.staged_forward(
      variables, batch.rgb, batch.sizes, batch.cells, dtype=options.dtype
    ) + (batch.cells,)

  def pool(method, maps, masks, valid, reduction):
    return batch_encoder.staged_pool(
      *maps,
      masks,
      valid,
      reduction,
      method=method,
      options=options.pooling_options,
    )

  return forward, pool


def pool_first(
  variables,
  image_paths,
  rows,
  methods,
  *,
  options,
  boxes=None,
  rotations=None,
  cache=None,
  sums=False,
):
  """Pass 1 of `encode_methods` over image_paths[r], r in rows.

  One staged VGG19 forward and region proposal per batch serves every
  method that needs no U^1; the batch's regions and maps go to `cache` for
  pass 2 (`pool_reduced`).

  Args:
    variables, image_paths, options, boxes, rotations: as in
      `encode_methods`.
    rows: the rows to encode, without repeats.
    methods: method_table.POOLING keys (reduced ones are left to pass 2).
    cache: MapsCache to keep the batches in, or None.
    sums: also pool eq. (3), what U^1 (eq. 4) is fitted on (`fit_sums`).

  Returns:
    ({method: records.Store} of the methods that need no U^1, records.Store
    of eq. (3) descriptors or None).

  Raises:
    TypeError: options is not a PassOptions.
  """
  _check_options(options)
  rows = [int(row) for row in rows]
  regional = any(method_table.POOLING[m].regional for m in methods)
  early = [m for m in methods if not method_table.POOLING[m].reduced]
  pools = {m: method_table.POOLING[m] for m in early}
  if sums:
    pools[None] = method_table.SUM
  skipped, outputs = [], {m: {} for m in pools}
  what = f'encoding ({", ".join(methods)})'
  _, batches, _ = _read_guarded(
    image_paths, rows, skipped, options, boxes, rotations, what=what
  )
  forward, pool = _staged(variables, options)
  for guard, batch in batches:
    with guard:
      maps = forward(batch)
      masks, valid = batch_encoder.propose_regions(
        batch.rgb,
        batch.sizes,
        batch.cells,
        maps[1],
        options.region_options if regional else None,
      )
      for key, method in pools.items():
        whole = slice(None) if method.regional else slice(-1, None)
        passes.collect_outputs(
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
  num_regions = 2**options.region_options.num_clusters if regional else 1
  stores = {
    key: passes.assemble_store(
      image_paths,
      rows,
      options.apply_exif,
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
  return file_encoder.fit_regions(
    list(sums.descriptors), list(sums.valid), k_prime
  )


def pool_reduced(
  variables,
  image_paths,
  rows,
  methods,
  *,
  reduction,
  options,
  boxes=None,
  rotations=None,
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

  Raises:
    TypeError: options is not a PassOptions.
  """
  _check_options(options)
  rows = [int(row) for row in rows]
  taken = cache.take(rows) if cache is not None else []
  known = cache.skipped if cache is not None else {}
  covered = {r for batch in taken for r in batch.rows} | set(known)
  skipped = [known[r] for r in rows if r in known]
  read, batches, _ = _read_guarded(
    image_paths,
    rows,
    skipped,
    options,
    boxes,
    rotations,
    what=f'second order (eq. 4-5) of {", ".join(methods)}',
    ahead=tqdm.tqdm(
      taken, desc='second order (eq. 4-5, cached conv5_4)', unit='batch'
    ),
    read_rows=[r for r in rows if r not in covered],
    desc='second order (eq. 4-5): read again',
  )
  forward, pool = _staged(variables, options)
  outputs = {m: {} for m in methods}
  for guard, batch in batches:
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
          batch.rgb, batch.sizes, batch.cells, maps[1], options.region_options
        )
      for method in methods:
        passes.collect_outputs(
          outputs[method],
          batch.rows,
          sizes,
          pool(method_table.POOLING[method], maps, masks, valid, reduction),
          valid,
          masks,
        )
  num_regions = 2**options.region_options.num_clusters
  return {
    m: passes.assemble_store(
      image_paths,
      rows,
      options.apply_exif,
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
  options,
  k_prime,
  cache_mib=2048,
  boxes=None,
  rotations=None,
  reduction=None,
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
    options: PassOptions (pooling, regions, reading, dtype) of both passes.
    k_prime: K' of eq. (4), the dimension of U^1 when it is fitted here.
    cache_mib: conv5_4 maps kept between the two 'o2' passes, in MiB.
    boxes: float (N, 4) x1 y1 x2 y2 crops at full resolution, or None.
    rotations: N clockwise degrees (multiples of 90), or None.
    reduction: U^1 (eq. 4) for 'o2' (queries: the database's); None fits it
      on these images (eq. 3).

  Returns:
    {method: records.Store} over the N' readable images, in input order:
    float32 (N', M, D_store) descriptors (M = 2^L, or 1 for global
    baselines), bool (N', M) validity, masks, U^1 for 'o2', metadata
    'inputs_hash', 'apply_exif', 'reduction_hash', 'rows', 'sizes' and
    'skipped'.

  Raises:
    ValueError: an unknown method, or a regional one without region_options.
    TypeError: options is not a PassOptions.
    resources.ResourceError: memory or memory maps ran out (naming the
      stage, the images done and the settings to lower).
  """
  _check_options(options)
  check_methods(methods, options.region_options, reduction)
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
    options=options,
    boxes=boxes,
    rotations=rotations,
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
        options=options,
        boxes=boxes,
        rotations=rotations,
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
