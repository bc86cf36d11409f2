"""Tests for regagg_jax.regions.region_masks (2^L convex-hull masks, Sec. 2).

The hull rasterisation itself is tested in test_hulls.py.
"""

import numpy as np

import jax
import jax.numpy as jnp

from regagg_jax.regions import region_masks
from tests.regions.test_hulls import GRID, IMAGE_SIZE, reference_mask


def test_power_set_order_and_members():
  labels = jnp.asarray([0, 1, 2, -1, 1], jnp.int32)
  members = np.asarray(region_masks.subset_members(labels, num_clusters=3))
  want = np.zeros((7, 5), bool)
  for m in range(1, 8):
    for p, label in enumerate([0, 1, 2, -1, 1]):
      want[m - 1, p] = label >= 0 and (m >> label) & 1 == 1
  np.testing.assert_array_equal(members, want)


def _cluster_points(seed=0):
  rng = np.random.default_rng(seed)
  centres = np.array([[25.0, 25.0], [95.0, 30.0], [60.0, 70.0]])
  points = np.concatenate([c + rng.normal(0, 9, (15, 2)) for c in centres])
  labels = np.repeat(np.arange(3), 15).astype(np.int32)
  return points.astype(np.float32), labels


def test_region_masks_slots_validity_and_whole_image():
  points, labels = _cluster_points()
  labels[3] = -1  # padding never counts
  labels = labels.copy()
  fn = jax.jit(
    region_masks.compute_region_masks, static_argnames=('num_clusters',)
  )
  masks, valid = fn(
    jnp.asarray(points),
    jnp.asarray(labels),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
  )
  masks, valid = np.asarray(masks), np.asarray(valid)
  assert masks.shape == (8,) + GRID and valid.shape == (8,)
  for m in range(1, 8):
    subset = points[(labels >= 0) & ((m >> np.maximum(labels, 0)) & 1 == 1)]
    want = reference_mask(subset)
    assert valid[m - 1] == (want.sum() >= 1)
    np.testing.assert_array_equal(masks[m - 1], want & valid[m - 1])
  assert valid[-1] and masks[-1].all()


def test_degenerate_and_tiny_regions_are_invalid():
  # Cluster 0 collinear along a row of centres, cluster 1 a single point on a
  # centre, cluster 2 a proper triangle.
  points = np.array(
    [[8, 24], [40, 24], [72, 24], [24, 72], [70, 50], [120, 50], [100, 90]],
    np.float32,
  )
  labels = np.array([0, 0, 0, 1, 2, 2, 2], np.int32)
  fn = jax.jit(
    region_masks.compute_region_masks,
    static_argnames=('num_clusters', 'min_cells'),
  )
  masks, valid = fn(
    jnp.asarray(points),
    jnp.asarray(labels),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
  )
  masks, valid = np.asarray(masks), np.asarray(valid)
  np.testing.assert_array_equal(
    valid, [False, False, True, True, True, True, True, True]
  )
  assert not masks[0].any() and not masks[1].any()
  # A larger min_cells discards the small triangle too.
  _, valid = fn(
    jnp.asarray(points),
    jnp.asarray(labels),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
    min_cells=1000,
  )
  np.testing.assert_array_equal(np.asarray(valid), [False] * 7 + [True])


def test_padded_grid_matches_unpadded():
  points, labels = _cluster_points(1)
  fn = jax.jit(
    region_masks.compute_region_masks, static_argnames=('num_clusters',)
  )
  masks, valid = fn(
    jnp.asarray(points),
    jnp.asarray(labels),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
  )
  padded_cells = np.zeros((9, 11), bool)
  padded_cells[: GRID[0], : GRID[1]] = True
  extra = np.random.default_rng(2).uniform(0, 200, (9, 2)).astype(np.float32)
  padded_masks, padded_valid = fn(
    jnp.asarray(np.concatenate([points, extra])),
    jnp.asarray(np.concatenate([labels, -np.ones(9, np.int32)])),
    jnp.asarray(padded_cells),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
  )
  np.testing.assert_array_equal(np.asarray(padded_valid), np.asarray(valid))
  np.testing.assert_array_equal(
    np.asarray(padded_masks)[:, : GRID[0], : GRID[1]], np.asarray(masks)
  )
  assert not np.asarray(padded_masks)[:, GRID[0] :].any()
  assert not np.asarray(padded_masks)[:, :, GRID[1] :].any()


def test_draw_regions_outlines():
  points, labels = _cluster_points()
  masks, valid = region_masks.compute_region_masks(
    jnp.asarray(points),
    jnp.asarray(labels),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
  )
  image = np.zeros(IMAGE_SIZE + (3,), np.uint8)
  drawn = region_masks.draw_regions(image, masks, valid, points=points)
  assert drawn.dtype == np.uint8 and drawn.shape == image.shape
  assert drawn.any() and not image.any()
  none = region_masks.draw_regions(image, masks, np.zeros(8, bool))
  assert not none.any()


def test_grid_size_is_the_top_left_block():
  cells = np.zeros((9, 11), bool)
  cells[:6, :8] = True
  np.testing.assert_array_equal(
    np.asarray(jax.jit(region_masks.compute_grid_size)(cells)), [6, 8]
  )
