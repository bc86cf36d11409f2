"""Encode and fit as a config says: the stages' config reader.

  encode / encode_rows  images -> records.Store: region descriptors
                        (N, M, D_store) + validity
  fit_reduction         U^1 of eq. (4) on pooling.reduction_images images
  fit                   Store -> records.Fit: PCA-whitening U^2, s (eq. 6)
  store_header          what a store on disk must match
                        (store_writer.build_store)

`retrieval` searches, `workspace` keeps a dataset's stores, fits and
indexes in the workdir and `modes` holds what run.py's --mode runs; with
this module they are the only code that reads a config.

`encode` reads the features, regions and pooling sections and hands them to
`file_encoder` (images -> region descriptors, one jit per batch; VGG19 on all
local devices when there are several), `encode_methods` to `method_encoder`
(several methods from one VGG19 pass). By default a store holds
unwhitened descriptors (D_store = K'(K'+1)/2 for 'o2', K otherwise) and
U^1, so one store serves every D, QE and R/W setting: whitening is fitted
on a store by `fit` and applied at search time. For millions of images,
pca.store_whitened stores D-dim eq. (6) outputs instead (whitening learnt
on pca.fit_on first). R/W (pooling.regional) only selects regions: W uses
R_M alone.

Stores and fits carry the hash of the config sections that made them
(`store_hash`, `fit_hash`) and mixing them with another config is refused.
Images that cannot be read are skipped, logged and listed in the store
metadata ('skipped'); store rows keep input order ('rows' maps them back).
Oxford / Paris images are read without their EXIF orientation, which their
query boxes ignore (datasets.Dataset.apply_exif); stores record it.
The eval / search / fit modes keep stores and fits in <workdir>/stores and
<workdir>/fits, keyed by those hashes, and reuse them (`workspace`).

PCA-whitening fitted on fewer vectors than ~16 times D amplifies noise
and ruins mAP: `fit` caps D at (fitting vectors) / pca.min_vectors_per_dim
and keeps PCA without whitening for sets too small to whiten
(pca.choose_whitening); pca.fit_on learns it on another set.
"""

import functools
import json
import os

from absl import logging
import jax
import numpy as np

from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import method_encoder
from regagg_jax.storage import provenance
from regagg_jax.storage import records
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader
from regagg_jax.encoding import parallel
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import method_table
from regagg_jax.features import vgg19
from regagg_jax.features import weights
from regagg_jax.regions import proposal

WEIGHTS = {
  'imagenet': lambda widths, seed: weights.load_params(),
  'random': lambda widths, seed: vgg19.init_params(
    jax.random.PRNGKey(seed), widths=widths
  ),
}
"""features.weights -> VGG19 variables."""

QUERY_REGIONS = {'all': False, 'whole': True}
"""search.query_regions -> whether queries use R_M (the whole image) only."""


def store_sections(config, method=None):
  """The config sections a store depends on: features (less _SPEED_ONLY),
  regions (regional methods) and pooling (less R/W), as plain JSON values.

  Args:
    config: ConfigDict.
    method: pooling method to use instead of config.pooling.method.
  """
  method = method or config.pooling.method
  features = {
    k: v for k, v in config.features.to_dict().items() if k not in _SPEED_ONLY
  }
  pooled = dict(config.pooling.to_dict(), method=method)
  pooled.pop('regional')
  sections = {'features': features, 'pooling': pooled}
  if method_table.POOLING[method].regional:
    sections['regions'] = config.regions.to_dict()
  return json.loads(json.dumps(sections))


def store_hash(config, method=None):
  """16 hex digits: records.hash_config of `store_sections`."""
  return records.hash_config(store_sections(config, method))


_SPEED_ONLY = (
  'batch_size',
  'cache_mib',
  'num_threads',
  'prefetch',
  'shard_size',
)
"""features fields that change how fast a store is made, not its contents."""


def fit_hash(config):
  """Hash of what a fit depends on besides its store: pca, R/W."""
  return records.hash_config(
    {'pca': config.pca.to_dict(), 'regional': config.pooling.regional}
  )


@functools.lru_cache(maxsize=2)
def _variables(weights, widths, seed):
  return WEIGHTS[weights](widths, seed)


def _encoder_options(config):
  """file_encoder keywords from the features, regions and pooling sections."""
  features = config.features
  mesh = None
  if jax.local_device_count() > 1:  # data parallelism over local devices
    mesh = parallel.make_mesh()
    if features.batch_size % jax.local_device_count():
      raise ValueError(
        f'features.batch_size={features.batch_size} must be a '
        f'multiple of the {jax.local_device_count()} devices'
      )
  return dict(
    region_options=proposal.RegionOptions(
      **{
        k: config.regions[k]
        for k in ('backend', 'n_max', 'n_min', 'num_clusters', 'min_cells')
      }
    ),
    max_size=features.max_size,
    batch_size=features.batch_size,
    dtype=features.dtype,
    mesh=mesh,
    num_threads=features.num_threads,
    prefetch=features.prefetch,
  )


def _pooling_options(config):
  return method_table.PoolingOptions(
    gem_power=float(config.pooling.gem_power),
    offdiag_scale=float(config.pooling.offdiag_scale),
    log_method=str(config.pooling.log_method),
    rmac_levels=int(config.pooling.rmac_levels),
  )


def _stamp(config, store, method):
  """Records store_sections and store_hash in a store's metadata."""
  return store._replace(
    metadata=dict(
      store.metadata,
      config_hash=store_hash(config, method),
      config=store_sections(config, method),
    )
  )


def variables(config):
  """VGG19 variables of config.features (loaded once per process)."""
  features = config.features
  return _variables(features.weights, tuple(features.widths), features.seed)


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
  encoder_options = _encoder_options(config)
  del encoder_options['mesh']  # encode_methods runs on the default device
  options = method_encoder.PassOptions(
    pooling_options=_pooling_options(config),
    apply_exif=apply_exif,
    **encoder_options,
  )
  arguments = {'options': options, 'boxes': boxes, 'rotations': rotations}
  if directory is None:
    stores = method_encoder.encode_methods(
      variables(config),
      image_paths,
      methods,
      k_prime=config.pooling.k_prime,
      cache_mib=config.features.cache_mib,
      reduction=reduction,
      **arguments,
    )
    return {m: _stamp(config, store, m) for m, store in stores.items()}
  method_encoder.check_methods(methods, options.region_options, reduction)
  later = [m for m in methods if method_table.POOLING[m].reduced]
  cache = method_encoder.MapsCache(config.features.cache_mib) if later else None
  fit_here = bool(later) and reduction is None
  shards = _Shards(config, image_paths, directory, apply_exif)
  for number in range(shards.count):
    first = functools.cache(
      lambda rows: method_encoder.pool_first(
        variables(config),
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
        variables(config),
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
    key = f'{name}-{store_hash(self.config, method)}'
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
      lambda rows: _stamp(self.config, encode(tuple(rows)), method),
      image_paths=self.image_paths,
      header=store_header(
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


def sample_rows(num_images, count):
  """int rows of `count` images evenly spaced over num_images (all if 0)."""
  if count <= 0 or count >= num_images:
    return list(range(num_images))
  return sorted(set(np.linspace(0, num_images - 1, count).astype(int)))


def fit_reduction(
  config, image_paths, *, boxes=None, rotations=None, apply_exif=True
):
  """U^1 of eq. (4) on pooling.reduction_images images spread over the set.

  Returns:
    pca.PCAParams, components float32 (K, K').
  """
  return file_encoder.fit_reduction(
    variables(config),
    image_paths,
    sample_rows(len(image_paths), config.pooling.reduction_images),
    k_prime=config.pooling.k_prime,
    boxes=boxes,
    rotations=rotations,
    apply_exif=apply_exif,
    **_encoder_options(config),
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
  return _stamp(
    config,
    file_encoder.encode_rows(
      variables(config),
      image_paths,
      rows,
      method,
      pooling_options=_pooling_options(config),
      reduction=reduction,
      whitening=whitening,
      boxes=boxes,
      rotations=rotations,
      apply_exif=apply_exif,
      **_encoder_options(config),
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
    reduction = fit_reduction(
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


def store_header(config, image_paths, *, reduction, whitening, apply_exif):
  """What a store on disk must match (store_writer.build_store's header)."""
  return {
    'config_hash': store_hash(config),
    'config': store_sections(config),
    'inputs_hash': records.hash_config([str(p) for p in image_paths]),
    'apply_exif': apply_exif,
    'reduction_hash': records.hash_params(reduction),
    'whitening_hash': records.hash_params(whitening),
  }


def use_regions(valid, *, whole):
  """bool (N, M) validity restricted to R_M (the last slot) when `whole`."""
  if not whole:
    return valid
  return valid & (np.arange(valid.shape[1]) == valid.shape[1] - 1)


def check_store(config, store, role='database'):
  """Refuses a store encoded with another config.

  Args:
    config: ConfigDict.
    store: records.Store.
    role: what the store is, for the message.

  Raises:
    ValueError: naming the differing config fields.
  """
  expected = store_hash(config)
  if store.metadata['config_hash'] != expected:
    changes = provenance.differences(
      store.metadata['config'], store_sections(config)
    )
    raise ValueError(
      f'the {role} store was encoded with config '
      f'{store.metadata["config_hash"]}'
      f', this config is {expected} ({"; ".join(changes[:8]) or "?"}); '
      'encode it again with this config'
    )


def check_fit(config, store, fit):
  """Refuses fitted whitening that does not belong to a store and config.

  Args:
    config: ConfigDict.
    store: records.Store the whitening is applied to.
    fit: records.Fit.

  Raises:
    ValueError: fitted on another config's descriptors, with another U^1,
      with other pca settings, or the store is from another config.
  """
  where = f'(fitted on {fit.metadata.get("fitted_on", "?")})'
  if fit.metadata['config_hash'] != store.metadata['config_hash']:
    raise ValueError(
      f'the PCA-whitening {where} was fitted on descriptors of config '
      f'{fit.metadata["config_hash"]} but the store holds config '
      f'{store.metadata["config_hash"]}; run --mode=fit with this config'
    )
  if fit.metadata['reduction_hash'] != store.metadata['reduction_hash']:
    raise ValueError(
      f'the PCA-whitening {where} was fitted with another U^1 '
      '(eq. 4) than the store was encoded with; fit it again'
    )
  check_store(config, store)
  if fit.metadata['fit_hash'] != fit_hash(config):
    raise ValueError(
      f'the PCA-whitening {where} was fitted with other pca '
      'settings (dim, whiten, fit_on) or R/W variant than this '
      'config; fit it again'
    )


def fit(config, store, *, fitted_on=''):
  """Fits PCA-whitening (eq. 6) on the region descriptors of a store.

  Only R_M is used for the W variant. D and whitening follow
  `pca.choose_whitening`: D = pca.dim capped at the descriptor dimension and
  at (valid vectors) / pca.min_vectors_per_dim, or PCA without whitening when
  that cap would force D below pca.min_whitened_dim; the reason is logged and
  kept in the metadata ('note') for the modes to print.

  Args:
    config: ConfigDict.
    store: records.Store encoded with `config`.
    fitted_on: what the store is (recorded), e.g. a dataset name.

  Returns:
    records.Fit with the store's U^1 and U^2, 1/s.
  """
  check_store(config, store, 'fitting')
  if provenance.is_whitened(store.metadata):
    raise ValueError(
      'cannot fit PCA-whitening on a store of whitened '
      'descriptors; fit it on an unwhitened store'
    )
  mask = use_regions(store.valid, whole=not config.pooling.regional)
  num_vectors = int(mask.sum())
  choice = pca.choose_whitening(
    num_vectors,
    store.descriptors.shape[-1],
    config.pca.dim,
    whiten=config.pca.whiten,
    min_vectors_per_dim=config.pca.min_vectors_per_dim,
    min_whitened_dim=config.pca.min_whitened_dim,
  )
  if choice.note:
    logging.warning('%s', choice.note)
  whitening = pca.fit(
    store.descriptors.reshape(-1, store.descriptors.shape[-1]),
    choice.dim,
    whiten=choice.whiten,
    mask=mask.reshape(-1),
    min_vectors_per_dim=config.pca.min_vectors_per_dim,
  )
  return records.Fit(
    store.reduction,
    whitening,
    {
      'config_hash': store.metadata['config_hash'],
      'reduction_hash': store.metadata['reduction_hash'],
      'fit_hash': fit_hash(config),
      'fitted_on': fitted_on,
      'num_images': len(store.image_paths),
      'num_vectors': num_vectors,
      'dim': choice.dim,
      'whiten': choice.whiten,
      'note': choice.note,
    },
  )
