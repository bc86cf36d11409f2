"""Builders shared by the storage tests: random stores and fits, and an
encode_part over a known store for store_writer.build_store.

Ten input images; rows 3 and 7 are unreadable; shards of 4 rows have their
own feature grids (masks padded on load).
"""

import os

import numpy as np

from regagg_jax.aggregation import pca
from regagg_jax.storage import records
from regagg_jax.storage import store_writer


def random_params(rng, d_in, dim):
  return pca.PCAParams(
    mean=rng.normal(size=d_in).astype(np.float32),
    components=rng.normal(size=(d_in, dim)).astype(np.float32),
    scale=rng.uniform(size=dim).astype(np.float32),
  )


def unit_descriptors(rng, valid, dim):
  """float32 (N, M, dim) random l2-normalised rows, 0 where ~valid (N, M)."""
  descriptors = rng.normal(size=valid.shape + (dim,))
  descriptors /= np.linalg.norm(descriptors, axis=-1, keepdims=True)
  return np.where(valid[..., None], descriptors, 0).astype(np.float32)


def random_store(rng, num_images=7, num_regions=4, dim=6, reduction=True):
  valid = rng.uniform(size=(num_images, num_regions)) > 0.3
  return records.Store(
    descriptors=unit_descriptors(rng, valid, dim),
    valid=valid,
    masks=rng.uniform(size=(num_images, num_regions, 5, 11)) > 0.5,
    grid=rng.integers(1, 6, size=(num_images, 2)).astype(np.int32),
    image_paths=tuple(f'/images/{i}.jpg' for i in range(num_images)),
    reduction=random_params(rng, 8, 3) if reduction else None,
    metadata={
      'config_hash': 'abc',
      'skipped': [['/x.jpg', 'corrupt']],
      'config': {'pooling': {'method': 'o2'}},
      'rows': list(range(num_images)),
      'sizes': [[16 * i, 20] for i in range(num_images)],
    },
  )


def assert_stores_equal(actual, expected, *, atol=0):
  for name in ('descriptors', 'valid', 'masks', 'grid'):
    got, want = getattr(actual, name), getattr(expected, name)
    assert got.dtype == want.dtype, name
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)
  assert actual.image_paths == expected.image_paths
  assert actual.metadata == expected.metadata
  assert (actual.reduction is None) == (expected.reduction is None)
  if expected.reduction is not None:
    for got, want in zip(actual.reduction, expected.reduction):
      np.testing.assert_array_equal(got, want)


def shard_files(path):
  return sorted(f for f in os.listdir(path) if f.startswith('shard_'))


# Resumable building. Ten input images; rows 3 and 7 are unreadable; shards
# of 4 rows have their own feature grids (masks padded on load).
NUM_INPUTS, UNREADABLE, SHARD = 10, (3, 7), 4


PATHS = [f'/images/{i}.jpg' for i in range(NUM_INPUTS)]


HEADER = {
  'config_hash': 'abc',
  'whitening_hash': 'none',
  'apply_exif': True,
  'config': {'regions': {'n_max': 60, 'n_min': 300}},
}


def encoded(rng, reduction=None):
  """The store build_store must produce, and the per-image truth."""
  rows = [r for r in range(NUM_INPUTS) if r not in UNREADABLE]
  valid = rng.uniform(size=(len(rows), 4)) > 0.3
  descriptors = np.where(
    valid[..., None], rng.normal(size=(len(rows), 4, 5)), 0
  ).astype(np.float32)
  grid = np.array([(3 + r // SHARD, 6 - r // SHARD) for r in rows], np.int32)
  masks = np.zeros((len(rows), 4, 5, 6), bool)
  for position, (height, width) in enumerate(grid):
    masks[position, :, :height, :width] = (
      rng.uniform(size=(4, height, width)) > 0.5
    )
  return records.Store(
    descriptors,
    valid,
    masks,
    grid,
    tuple(PATHS[r] for r in rows),
    reduction,
    dict(
      HEADER,
      rows=rows,
      reduction_hash=records.hash_params(reduction),
      sizes=[[r, 2 * r] for r in rows],
      skipped=[[PATHS[r], 'unreadable'] for r in UNREADABLE],
    ),
  )


class Encoder:
  """encode_part over an encoded store; records the rows it is asked for."""

  def __init__(self, store, **changes):
    self.store, self.changes, self.calls = store, changes, []

  def __call__(self, rows):
    self.calls.append(rows)
    metadata = self.store.metadata
    positions = [p for p, r in enumerate(metadata['rows']) if r in rows]
    height, width = (
      int(v) for v in self.store.grid[positions].max(axis=0, initial=1)
    )
    return records.Store(
      self.store.descriptors[positions],
      self.store.valid[positions],
      self.store.masks[positions, :, :height, :width],
      self.store.grid[positions],
      tuple(self.store.image_paths[p] for p in positions),
      self.store.reduction,
      dict(
        metadata,
        **self.changes,
        rows=[metadata['rows'][p] for p in positions],
        sizes=[metadata['sizes'][p] for p in positions],
        skipped=[s for s in metadata['skipped'] if PATHS.index(s[0]) in rows],
      ),
    )


def build(path, encode_part, **kwargs):
  kwargs = dict(
    dict(image_paths=PATHS, header=HEADER, shard_size=SHARD), **kwargs
  )
  return store_writer.build_store(path, encode_part, **kwargs)
