"""Synthetic stores and quick configs for the experiment tests."""

import numpy as np

from configs import quick
from regagg_jax.experiment import settings
from regagg_jax.storage import records
from tests.storage import stores


def config_with(**changes):
  """configs/quick.py with section__field=value changes."""
  config = quick.get_config()
  for key, value in changes.items():
    section, field = key.split('__')
    config[section][field] = value
  return config


def synthetic_store(
  config, rng, num_images=9, num_regions=4, dim=12, reduction=None
):
  """records.Store of random unit descriptors, R_M always valid (image 0
  has R_M only), stamped with config's store hash."""
  valid = rng.uniform(size=(num_images, num_regions)) > 0.3
  valid[:, -1] = True  # the whole image always exists
  valid[0, :-1] = False  # one image with R_M only
  return records.Store(
    descriptors=stores.unit_descriptors(rng, valid, dim),
    valid=valid,
    masks=np.ones((num_images, num_regions, 3, 4), bool),
    grid=np.full((num_images, 2), (3, 4), np.int32),
    image_paths=tuple(f'{i}.jpg' for i in range(num_images)),
    reduction=reduction,
    metadata={
      'config_hash': settings.store_hash(config),
      'config': settings.store_sections(config),
      'reduction_hash': records.hash_params(reduction),
      'rows': list(range(num_images)),
      'sizes': [[48, 64]] * num_images,
      'skipped': [],
    },
  )
