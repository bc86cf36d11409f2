"""Fit as a config says: U^1 of eq. (4) and PCA-whitening of eq. (6).

  sample_rows    the rows of pooling.reduction_images images over a set
  fit_reduction  U^1 of eq. (4) on those images
  fit            Store -> records.Fit: PCA-whitening U^2, s (eq. 6)

PCA-whitening fitted on fewer vectors than ~16 times D amplifies noise
and ruins mAP: `fit` caps D at (fitting vectors) / pca.min_vectors_per_dim
and keeps PCA without whitening for sets too small to whiten
(pca.choose_whitening); pca.fit_on learns it on another set. R/W
(pooling.regional) only selects regions: W uses R_M alone.
"""

from absl import logging
import numpy as np

from regagg_jax.aggregation import pca
from regagg_jax.encoding import file_encoder
from regagg_jax.experiment import settings
from regagg_jax.storage import provenance
from regagg_jax.storage import records


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
    settings.variables(config),
    image_paths,
    sample_rows(len(image_paths), config.pooling.reduction_images),
    k_prime=config.pooling.k_prime,
    boxes=boxes,
    rotations=rotations,
    apply_exif=apply_exif,
    **settings.encoder_options(config),
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
  settings.check_store(config, store, 'fitting')
  if provenance.is_whitened(store.metadata):
    raise ValueError(
      'cannot fit PCA-whitening on a store of whitened '
      'descriptors; fit it on an unwhitened store'
    )
  mask = settings.use_regions(store.valid, whole=not config.pooling.regional)
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
      'fit_hash': settings.fit_hash(config),
      'fitted_on': fitted_on,
      'num_images': len(store.image_paths),
      'num_vectors': num_vectors,
      'dim': choice.dim,
      'whiten': choice.whiten,
      'note': choice.note,
    },
  )
