"""Encode, fit and search as a config says: the stages' config reader.

  encode  images -> index.Store: region descriptors (N, M, D_store) + validity
  fit     Store -> index.Fit: PCA-whitening U^2, s (eq. 6)
  search  queries x Store -> scores (eq. 7, eq. 8 with QE), ranks, best region

`workspace` keeps a dataset's stores and fits in the workdir and `modes`
holds what run.py's --mode runs; with this module they are the only code
that reads a config.

`encode` reads the features, regions and pooling sections and hands them to
`encoder` (images -> region descriptors, two-pass for 'o2'); `figures` draws
the demo's Fig. 2. A store holds unwhitened descriptors (D_store =
K'(K'+1)/2 for 'o2', K otherwise) and U^1, so one store serves every D, QE
and R/W setting: whitening is fitted on a store by `fit` and applied at
search time. R/W (pooling.regional) only selects regions: W uses R_M alone.

Stores and fits carry the hash of the config sections that made them
(`store_hash`, `fit_hash`) and mixing them with another config is refused.
Images that cannot be read are skipped, logged and listed in the store
metadata ('skipped'); store rows keep input order ('rows' maps them back).
Oxford / Paris images are read without their EXIF orientation, which their
query boxes ignore (datasets.Dataset.apply_exif); stores record it.
The eval / search / fit modes keep stores and fits in <workdir>/stores and
<workdir>/fits, keyed by those hashes, and reuse them (`workspace`).

PCA-whitening fitted on fewer vectors than a few times D amplifies noise
and ruins mAP: `fit` caps D at (fitting vectors) / pca.min_vectors_per_dim,
pca.fit_on learns it on another set, and the demo (configs/demo.py) uses a
small D = 16 for every method.
"""

import json
from typing import NamedTuple

from absl import logging
import jax
import numpy as np

from regagg_jax import encoder
from regagg_jax import evaluation
from regagg_jax import index
from regagg_jax import pca
from regagg_jax import similarity
from regagg_jax import vgg19

WEIGHTS = {
    'imagenet': lambda features: vgg19.load_params(),
    'random': lambda features: vgg19.init_params(
        jax.random.PRNGKey(features.seed), widths=tuple(features.widths)),
}
"""features.weights -> VGG19 variables."""

QUERY_REGIONS = {'all': False, 'whole': True}
"""search.query_regions -> whether queries use R_M (the whole image) only."""


def store_hash(config, method=None):
  """Hash of what a store depends on: features, regions, pooling (not R/W).

  Args:
    config: ConfigDict.
    method: pooling method to hash instead of config.pooling.method.

  Returns:
    16 hex digits (index.hash_config).
  """
  method = method or config.pooling.method
  features = {k: v for k, v in config.features.to_dict().items()
              if k not in ('batch_size', 'cache_mib')}
  pooled = dict(config.pooling.to_dict(), method=method)
  pooled.pop('regional')
  sections = {'features': features, 'pooling': pooled}
  if encoder.POOLING[method].regional:
    sections['regions'] = config.regions.to_dict()
  return index.hash_config(sections)


def fit_hash(config):
  """Hash of what a fit depends on besides its store: pca, R/W."""
  return index.hash_config({'pca': config.pca.to_dict(),
                            'regional': config.pooling.regional})


def encode_methods(config, image_paths, methods, *, boxes=None,
                   rotations=None, reduction=None, apply_exif=True):
  """Encodes images once for several pooling methods (one VGG19 pass).

  Reads the features, regions and pooling sections for
  `encoder.encode_methods` and records the config and its `store_hash` in
  each store's metadata.

  Args:
    config: ConfigDict (features, regions, pooling sections).
    image_paths: N image files.
    methods: encoder.POOLING keys.
    boxes: float (N, 4) x1 y1 x2 y2 crops at full resolution, or None.
    rotations: N clockwise degrees (multiples of 90), or None.
    reduction: U^1 (eq. 4) for 'o2' (queries: the database's); None fits
      it on these images.
    apply_exif: apply JPEG EXIF orientations (datasets.Dataset.apply_exif).

  Returns:
    {method: index.Store} over the readable images, in input order.

  Raises:
    ValueError: an unknown method.
  """
  features = config.features
  stores = encoder.encode_methods(
      WEIGHTS[features.weights](features), image_paths, methods,
      region_options={k: config.regions[k] for k in (
          'backend', 'n_max', 'n_min', 'num_clusters', 'min_cells')},
      pooling_options={'gem_power': float(config.pooling.gem_power),
                       'offdiag_scale': float(config.pooling.offdiag_scale),
                       'rmac_levels': int(config.pooling.rmac_levels)},
      k_prime=config.pooling.k_prime, max_size=features.max_size,
      batch_size=features.batch_size, dtype=features.dtype,
      cache_mib=features.cache_mib, boxes=boxes, rotations=rotations,
      reduction=reduction, apply_exif=apply_exif)
  return {method: store._replace(metadata=dict(
      store.metadata, config_hash=store_hash(config, method),
      config=json.loads(json.dumps(dict(config.to_dict(), pooling=dict(
          config.pooling.to_dict(), method=method))))))
          for method, store in stores.items()}


def encode(config, image_paths, *, boxes=None, rotations=None,
           reduction=None, apply_exif=True):
  """Encodes images with config.pooling.method (see `encode_methods`).

  Returns:
    index.Store: float32 (N', M, D_store) descriptors of the N' readable
    images (M = 2^L, or 1 for global baselines), bool (N', M) validity,
    masks, U^1 and metadata (config, hashes, rows, sizes, skipped).
  """
  method = config.pooling.method
  return encode_methods(config, image_paths, (method,), boxes=boxes,
                        rotations=rotations, reduction=reduction,
                        apply_exif=apply_exif)[method]


def _use_regions(valid, *, whole):
  """bool (N, M) validity restricted to R_M (the last slot) when `whole`."""
  if not whole:
    return valid
  return valid & (np.arange(valid.shape[1]) == valid.shape[1] - 1)


def _differences(stored, current, prefix=''):
  """'section.key: stored -> current' for every differing config value."""
  keys = sorted(set(stored) | set(current))
  lines = []
  for key in keys:
    old, new = stored.get(key), current.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      lines += _differences(old, new, f'{prefix}{key}.')
    elif old != new:
      lines.append(f'{prefix}{key}: {old!r} -> {new!r}')
  return lines


def check_store(config, store, role='database'):
  """Refuses a store encoded with another config.

  Args:
    config: ConfigDict.
    store: index.Store.
    role: what the store is, for the message.

  Raises:
    ValueError: naming the differing config fields.
  """
  expected = store_hash(config)
  if store.metadata['config_hash'] != expected:
    current = json.loads(json.dumps(config.to_dict()))
    changes = [c for c in _differences(store.metadata['config'], current)
               if c.split('.')[0] in ('features', 'regions', 'pooling')]
    raise ValueError(
        f'the {role} store was encoded with config '
        f'{store.metadata["config_hash"]}'
        f', this config is {expected} ({"; ".join(changes[:8]) or "?"}); '
        'encode it again with this config')


def check_fit(config, store, fit):
  """Refuses fitted whitening that does not belong to a store and config.

  Args:
    config: ConfigDict.
    store: index.Store the whitening is applied to.
    fit: index.Fit.

  Raises:
    ValueError: fitted on another config's descriptors, with another U^1,
      with other pca settings, or the store is from another config.
  """
  where = f'(fitted on {fit.metadata.get("fitted_on", "?")})'
  if fit.metadata['config_hash'] != store.metadata['config_hash']:
    raise ValueError(
        f'the PCA-whitening {where} was fitted on descriptors of config '
        f'{fit.metadata["config_hash"]} but the store holds config '
        f'{store.metadata["config_hash"]}; run --mode=fit with this config')
  if fit.metadata['reduction_hash'] != store.metadata['reduction_hash']:
    raise ValueError(f'the PCA-whitening {where} was fitted with another U^1 '
                     '(eq. 4) than the store was encoded with; fit it again')
  check_store(config, store)
  if fit.metadata['fit_hash'] != fit_hash(config):
    raise ValueError(f'the PCA-whitening {where} was fitted with other pca '
                     'settings (dim, whiten, fit_on) or R/W variant than this '
                     'config; fit it again')


def fit(config, store, *, fitted_on=''):
  """Fits PCA-whitening (eq. 6) on the region descriptors of a store.

  Only R_M is used for the W variant. D = pca.dim, capped at the descriptor
  dimension and at (valid vectors) / pca.min_vectors_per_dim (logged).

  Args:
    config: ConfigDict.
    store: index.Store encoded with `config`.
    fitted_on: what the store is (recorded), e.g. a dataset name.

  Returns:
    index.Fit with the store's U^1 and U^2, 1/s.
  """
  check_store(config, store, 'fitting')
  mask = _use_regions(store.valid, whole=not config.pooling.regional)
  num_vectors = int(mask.sum())
  dim = min(config.pca.dim, store.descriptors.shape[-1],
            max(1, num_vectors // config.pca.min_vectors_per_dim))
  if dim < config.pca.dim:
    logging.warning('PCA-whitening D capped from %d to %d: %d fitting vectors '
                    'of dimension %d', config.pca.dim, dim, num_vectors,
                    store.descriptors.shape[-1])
  whitening = pca.fit(
      store.descriptors.reshape(-1, store.descriptors.shape[-1]),
                      dim, whiten=config.pca.whiten, mask=mask.reshape(-1))
  return index.Fit(store.reduction, whitening, {
      'config_hash': store.metadata['config_hash'],
      'reduction_hash': store.metadata['reduction_hash'],
      'fit_hash': fit_hash(config), 'fitted_on': fitted_on,
      'num_images': len(store.image_paths), 'num_vectors': num_vectors,
      'dim': dim})


class Ranking(NamedTuple):
  """Search results.

  Attributes:
    scores: float32 (Q, N) eq. (7), or eq. (8) with QE.
    ranks: int64 (Q, N) database rows, best first.
    best: int32 (Q, N) best-matched database region of eq. (7).
  """
  scores: np.ndarray
  ranks: np.ndarray
  best: np.ndarray


def search(config, queries, database, fitted):
  """Ranks a database store for every image of a query store.

  Args:
    config: ConfigDict (pooling.regional, search section).
    queries: index.Store of the queries, encoded with the database's U^1.
    database: index.Store.
    fitted: index.Fit of the database's config.

  Returns:
    Ranking.

  Raises:
    ValueError: stores or fit from different configs.
  """
  check_fit(config, database, fitted)
  check_store(config, queries, 'query')
  if queries.metadata['reduction_hash'] != database.metadata['reduction_hash']:
    raise ValueError('the queries were encoded with another U^1 (eq. 4) than '
                     'the database; encode them with '
                     'reduction=database.reduction')
  whole = not config.pooling.regional
  query_valid = _use_regions(queries.valid, whole=whole or QUERY_REGIONS[
      config.search.query_regions])
  database_valid = _use_regions(database.valid, whole=whole)
  query = pca.apply(fitted.whitening, jax.numpy.asarray(queries.descriptors),
                    jax.numpy.asarray(query_valid))  # eq. (6)
  target = pca.apply(fitted.whitening, jax.numpy.asarray(database.descriptors),
                     jax.numpy.asarray(database_valid))
  scores, best = similarity.image_similarity(  # eq. (7)
      query, query_valid, target, database_valid,
      chunk_size=config.search.chunk_size)
  if config.search.qe:
    scores = similarity.query_expansion(  # eq. (8)
        query, target, database_valid, scores, best,
        n_qe=min(config.search.n_qe, len(database.image_paths)),
        include_query=config.search.qe_include_query,
        query_valid=jax.numpy.asarray(query_valid),
        chunk_size=config.search.chunk_size)
  scores = np.asarray(scores)
  return Ranking(scores, evaluation.ranks_from_scores(scores), np.asarray(best))
