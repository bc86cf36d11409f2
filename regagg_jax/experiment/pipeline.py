"""Encode as a config says: images -> records.Store.

  encode / encode_rows  images -> records.Store: region descriptors
                        (N, M, D_store) + validity
  encode_methods        several pooling methods from one VGG19 pass

`settings` holds the config's hashes, options and checks, `fitting` U^1
(eq. 4) and the PCA-whitening (eq. 6), `retrieval` searches, `stores` and
`workspace` keep a dataset's stores and fits in the workdir and `modes`
holds what run.py's --mode runs; with this module they are the only code
that reads a config.

`encode` reads the features, regions and pooling sections and hands them to
`file_encoder` (images -> region descriptors, one jit per batch; VGG19 on all
local devices when there are several), `encode_methods` to `method_encoder`
(several methods from one VGG19 pass). By default a store holds
unwhitened descriptors (D_store = K'(K'+1)/2 for 'o2', K otherwise) and
U^1, so one store serves every D, QE and R/W setting: whitening is fitted
on a store by `fitting.fit` and applied at search time. For millions of
images, pca.store_whitened stores D-dim eq. (6) outputs instead (whitening
learnt on pca.fit_on first).

Stores record the config sections that made them (settings.stamp).
Images that cannot be read are skipped, logged and listed in the store
metadata ('skipped'); store rows keep input order ('rows' maps them back).
Oxford / Paris images are read without their EXIF orientation, which their
query boxes ignore (datasets.Dataset.apply_exif); stores record it.
"""

import functools
import os

from regagg_jax.aggregation import method_table
from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import method_encoder
from regagg_jax.experiment import fitting
from regagg_jax.experiment import settings
from regagg_jax.storage import records
from regagg_jax.storage import store_reader
from regagg_jax.storage import store_writer


def encode_methods(
  config,
  image_paths,
  methods,
  *,
  boxes=None,
  rotations=None,
  reduction=None,
  apply_exif=True,
  directory=None,
):
  """Encodes images once for several pooling methods (one VGG19 pass).

  `method_encoder.encode_methods` with the features, regions and pooling
  sections; the config and its `store_hash` are recorded in each store's
  metadata. With `directory` the same passes run shard by shard
  (features.shard_size images) into resumable stores there, as
  --mode=encode's (store_writer.build_store): <method>-<store hash> for the
  methods without U^1 and, for 'o2', sums-<store hash> (the eq. 3
  descriptors U^1 is fitted on) and o2-<store hash>-<U^1 hash>. A killed
  run resumes from its finished shards; pass 2 reuses the conv5_4 maps
  cached by pass 1 of this process (features.cache_mib) and reads again
  what it lacks.

  Args:
    config: ConfigDict (features, regions, pooling sections).
    image_paths: N image files.
    methods: method_table.POOLING keys.
    boxes: float (N, 4) x1 y1 x2 y2 crops at full resolution, or None.
    rotations: N clockwise degrees (multiples of 90), or None.
    reduction: U^1 (eq. 4) for 'o2' (queries: the database's); None fits
      it on these images.
    apply_exif: apply JPEG EXIF orientations (datasets.Dataset.apply_exif).
    directory: where the resumable stores go; None: in memory.

  Returns:
    {method: records.Store} over the readable images, in input order.

  Raises:
    ValueError: an unknown method.
    resources.ResourceError: memory or memory maps ran out.
  """
  encoder_options = settings.encoder_options(config)
  del encoder_options['mesh']  # encode_methods runs on the default device
  options = method_encoder.PassOptions(
    pooling_options=settings.pooling_options(config),
    apply_exif=apply_exif,
    **encoder_options,
  )
  arguments = {'options': options, 'boxes': boxes, 'rotations': rotations}
  if directory is None:
    stores = method_encoder.encode_methods(
      settings.variables(config),
      image_paths,
      methods,
      k_prime=config.pooling.k_prime,
      cache_mib=config.features.cache_mib,
      reduction=reduction,
      **arguments,
    )
    return {m: settings.stamp(config, store, m) for m, store in stores.items()}
  method_encoder.check_methods(methods, options.region_options, reduction)
  later = [m for m in methods if method_table.POOLING[m].reduced]
  cache = method_encoder.MapsCache(config.features.cache_mib) if later else None
  fit_here = bool(later) and reduction is None
  shards = _Shards(config, image_paths, directory, apply_exif)
  for number in range(shards.count):
    first = functools.cache(
      lambda rows: method_encoder.pool_first(
        settings.variables(config),
        image_paths,
        rows,
        methods,
        cache=cache,
        sums=fit_here,
        **arguments,
      )
    )
    for method in methods:
      if method not in later:
        shards.build(method, number, lambda r, m=method: first(r)[0][m])
    if fit_here:
      shards.build('sums', number, lambda r: first(r)[1], method='o2')
  if fit_here:
    reduction = method_encoder.fit_sums(
      store_reader.load_store(shards.path('sums', 'o2')), config.pooling.k_prime
    )
  for number in range(shards.count):
    second = functools.cache(
      lambda rows: method_encoder.pool_reduced(
        settings.variables(config),
        image_paths,
        rows,
        later,
        reduction=reduction,
        cache=cache,
        **arguments,
      )
    )
    for method in later:
      shards.build(
        method, number, lambda r, m=method: second(r)[m], reduction=reduction
      )
  return {
    m: store_reader.load_store(
      shards.path(m, m, reduction if m in later else None)
    )
    for m in methods
  }


class _Shards:
  """The resumable stores of `encode_methods` under one directory."""

  def __init__(self, config, image_paths, directory, apply_exif):
    self.config, self.image_paths = config, image_paths
    self.directory, self.apply_exif = directory, apply_exif
    self.size = config.features.shard_size
    self.count = -(-len(image_paths) // self.size)

  def path(self, name, method, reduction=None):
    """<directory>/<name>-<store hash of method>[-<U^1 hash>]."""
    key = f'{name}-{settings.store_hash(self.config, method)}'
    if reduction is not None:
      key += f'-{records.hash_params(reduction)}'
    return os.path.join(self.directory, key)

  def build(self, name, number, encode, *, method=None, reduction=None):
    """Writes shard `number` of store `name` (pooled as `method`, default
    `name`) with encode(rows) unless it is there (store_writer.build_store)."""
    method = method or name
    variant = self.config.copy_and_resolve_references()
    variant.pooling.method = method
    store_writer.build_store(
      self.path(name, method, reduction),
      lambda rows: settings.stamp(self.config, encode(tuple(rows)), method),
      image_paths=self.image_paths,
      header=settings.store_header(
        variant,
        self.image_paths,
        reduction=reduction,
        whitening=None,
        apply_exif=self.apply_exif,
      ),
      shard_size=self.size,
      dtype='float32' if name == 'sums' else self.config.features.store_dtype,
      shards=[number],
      reduction=reduction,
    )


def encode_rows(
  config,
  image_paths,
  rows,
  *,
  reduction=None,
  whitening=None,
  boxes=None,
  rotations=None,
  apply_exif=True,
):
  """Encodes image_paths[r], r in rows, in one pass (file_encoder.encode_rows).

  Args:
    config: ConfigDict.
    image_paths: N image files.
    rows: the rows to encode.
    reduction: U^1 (eq. 4); required by 'o2'.
    whitening: PCAParams of eq. (6) to store whitened descriptors, or None.
    boxes, rotations, apply_exif: as in `encode_methods`.

  Returns:
    records.Store of the readable rows with the config and its hash recorded.
  """
  method = config.pooling.method
  return settings.stamp(
    config,
    file_encoder.encode_rows(
      settings.variables(config),
      image_paths,
      rows,
      method,
      pooling_options=settings.pooling_options(config),
      reduction=reduction,
      whitening=whitening,
      boxes=boxes,
      rotations=rotations,
      apply_exif=apply_exif,
      **settings.encoder_options(config),
    ),
    method,
  )


def encode(
  config,
  image_paths,
  *,
  boxes=None,
  rotations=None,
  reduction=None,
  whitening=None,
  apply_exif=True,
):
  """Encodes images with config.pooling.method, in memory.

  For 'o2' without `reduction`, U^1 is first fitted on them
  (`fit_reduction`).

  Returns:
    records.Store: float32 (N', M, D_store) descriptors of the N' readable
    images (M = 2^L, or 1 for global baselines; D_store = D when
    `whitening` is given), bool (N', M) validity, masks, U^1 and metadata
    (config, hashes, rows, sizes, skipped).
  """
  if reduction is None and method_table.POOLING[config.pooling.method].reduced:
    reduction = fitting.fit_reduction(
      config,
      image_paths,
      boxes=boxes,
      rotations=rotations,
      apply_exif=apply_exif,
    )
  return encode_rows(
    config,
    image_paths,
    range(len(image_paths)),
    reduction=reduction,
    whitening=whitening,
    boxes=boxes,
    rotations=rotations,
    apply_exif=apply_exif,
  )
