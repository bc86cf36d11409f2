"""A config's settings: hashes, options and checks of the stages.

  store_sections / store_hash  what a store depends on, and its hash
  fit_hash                     what a fit depends on besides its store
  store_header                 what a store on disk must match
                               (store_writer.build_store)
  variables                    VGG19 variables of config.features
  encoder_options / pooling_options  the encoders' keywords and options
  stamp                        the config and its hash in a store's metadata
  use_regions                  validity restricted to R_M (W, whole queries)
  check_store / check_fit      a store or fit of another config refused

Stores and fits carry the hash of the config sections that made them
(`store_hash`, `fit_hash`) and mixing them with another config is refused
(`check_store`, `check_fit`, naming the differing fields). String options
are keys of one table per stage (WEIGHTS, QUERY_REGIONS here).
"""

import functools
import json

import jax
import numpy as np

from regagg_jax.aggregation import method_table
from regagg_jax.encoding import parallel
from regagg_jax.features import vgg19
from regagg_jax.features import weights
from regagg_jax.regions import proposal
from regagg_jax.storage import provenance
from regagg_jax.storage import records


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
def _cached_variables(weights, widths, seed):
  """WEIGHTS[weights](widths, seed), kept for the last two settings."""
  return WEIGHTS[weights](widths, seed)


def variables(config):
  """VGG19 variables of config.features (loaded once per process)."""
  features = config.features
  return _cached_variables(
    features.weights, tuple(features.widths), features.seed
  )


def encoder_options(config):
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


def pooling_options(config):
  """method_table.PoolingOptions of the pooling section."""
  return method_table.PoolingOptions(
    gem_power=float(config.pooling.gem_power),
    offdiag_scale=float(config.pooling.offdiag_scale),
    log_method=str(config.pooling.log_method),
    rmac_levels=int(config.pooling.rmac_levels),
  )


def stamp(config, store, method):
  """Records store_sections and store_hash in a store's metadata."""
  return store._replace(
    metadata=dict(
      store.metadata,
      config_hash=store_hash(config, method),
      config=store_sections(config, method),
    )
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
