"""Tests for regagg_jax.regions.proposal (2^L convex-hull candidate regions, Sec. 2).

The hull rasterisation itself is tested in test_hulls.py.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from regagg_jax.regions import keypoints
from regagg_jax.regions import proposal
from tests.regions.test_hulls import GRID, IMAGE_SIZE, reference_mask


def test_power_set_order_and_members():
  labels = jnp.asarray([0, 1, 2, -1, 1], jnp.int32)
  members = np.asarray(proposal.subset_members(labels, num_clusters=3))
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
  fn = jax.jit(proposal.compute_region_masks, static_argnames=('num_clusters',))
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
    proposal.compute_region_masks, static_argnames=('num_clusters', 'min_cells')
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
  fn = jax.jit(proposal.compute_region_masks, static_argnames=('num_clusters',))
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


def _test_image(seed=0):
  rng = np.random.default_rng(seed)
  image = np.full(IMAGE_SIZE + (3,), 200, np.uint8)
  for _ in range(25):
    x, y = rng.integers(8, 120), rng.integers(8, 88)
    image[max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] = rng.integers(0, 80)
  return image


def test_propose_and_batch_agree():
  pytest.importorskip('pyhesaff')
  image = _test_image()
  alpha = np.random.default_rng(1).uniform(0, 1, GRID).astype(np.float32)
  masks, valid = proposal.propose(image, alpha, n_max=64, n_min=8)
  assert masks.shape == (8,) + GRID and masks.dtype == bool
  assert valid.shape == (8,) and bool(valid[-1])
  padded = np.zeros((2, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = image
  padded[1, :96, :128] = image[::-1]
  padded_alpha = np.zeros((2, 8, 10), np.float32)
  padded_alpha[:, :6, :8] = alpha
  cells = np.zeros((2, 8, 10), bool)
  cells[:, :6, :8] = True
  batch_masks, batch_valid = proposal.propose_batch(
    padded, padded_alpha, cells, [[96, 128], [96, 128]], n_max=64, n_min=8
  )
  assert batch_masks.shape == (2, 8, 8, 10)
  np.testing.assert_array_equal(
    np.asarray(batch_masks)[0, :, :6, :8], np.asarray(masks)
  )
  np.testing.assert_array_equal(np.asarray(batch_valid)[0], np.asarray(valid))
  assert not np.asarray(batch_masks)[:, :, 6:].any()
  # min_cells passes through: only the whole image survives a huge minimum.
  _, strict = proposal.propose(image, alpha, n_max=64, n_min=8, min_cells=10**6)
  np.testing.assert_array_equal(np.asarray(strict), [False] * 7 + [True])


def test_propose_jax_backend_end_to_end():
  image = _test_image(3)
  alpha = np.random.default_rng(4).uniform(0, 1, GRID).astype(np.float32)
  masks, valid = proposal.propose(
    image, alpha, backend='jax', n_max=64, n_min=8
  )
  assert masks.shape == (8,) + GRID and bool(valid[-1])
  assert np.asarray(masks)[-1].all()
  padded = np.zeros((1, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = image
  cells = np.zeros((1, 8, 10), bool)
  cells[0, :6, :8] = True
  padded_alpha = np.zeros((1, 8, 10), np.float32)
  padded_alpha[0, :6, :8] = alpha
  batch_masks, batch_valid = proposal.propose_batch(
    padded, padded_alpha, cells, [[96, 128]], backend='jax', n_max=64, n_min=8
  )
  assert batch_masks.shape == (1, 8, 8, 10) and bool(batch_valid[0, -1])
  assert not np.asarray(batch_masks)[0][:, ~cells[0]].any()
  np.testing.assert_array_equal(
    np.asarray(batch_masks)[0, :, :6, :8], np.asarray(masks)
  )
  np.testing.assert_array_equal(np.asarray(batch_valid)[0], np.asarray(valid))
  # The fused detection + selection equals detecting every point first.
  points, valid_points = keypoints.detect(image, backend='jax')
  want_masks, want_valid = proposal._regions_from_points(  # pylint: disable=protected-access
    points,
    valid_points,
    jnp.asarray(alpha),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    padded_shape=IMAGE_SIZE,
    n_max=64,
    n_min=8,
    num_clusters=3,
    min_cells=1,
  )
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(want_masks))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(want_valid))
  assert np.asarray(valid)[:-1].any()


def test_propose_batch_jax_traces_inside_an_outer_jit():
  # The encoder jits the whole per-image chain: propose_batch(backend="jax")
  # must trace (no host reads of its inputs) and equal the eager call.
  padded = np.zeros((2, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = _test_image(10)
  padded[1, :80, :112] = _test_image(11)[:80, :112]
  alpha = np.zeros((2, 8, 10), np.float32)
  alpha[0, :6, :8] = np.random.default_rng(12).uniform(0, 1, GRID)
  alpha[1, :5, :7] = np.random.default_rng(13).uniform(0, 1, (5, 7))
  cells = alpha > 0
  sizes = np.array([[96, 128], [80, 112]], np.int32)
  options = dict(backend='jax', n_max=64, n_min=8, num_clusters=3)
  eager_masks, eager_valid = proposal.propose_batch(
    padded, alpha, cells, sizes, **options
  )
  traced = jax.jit(lambda *arrays: proposal.propose_batch(*arrays, **options))
  masks, valid = traced(
    jnp.asarray(padded),
    jnp.asarray(alpha),
    jnp.asarray(cells),
    jnp.asarray(sizes),
  )
  assert masks.shape == (2, 8, 8, 10) and valid.shape == (2, 8)
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(eager_masks))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(eager_valid))
  assert np.asarray(valid)[:, -1].all() and np.asarray(valid)[:, :-1].any()
  assert not np.asarray(masks)[:, :, ~cells.any(axis=0)].any()
  assert not np.asarray(masks)[1][:, ~cells[1]].any()


def test_draw_regions_outlines():
  points, labels = _cluster_points()
  masks, valid = proposal.compute_region_masks(
    jnp.asarray(points),
    jnp.asarray(labels),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    num_clusters=3,
  )
  image = np.zeros(IMAGE_SIZE + (3,), np.uint8)
  drawn = proposal.draw_regions(image, masks, valid, points=points)
  assert drawn.dtype == np.uint8 and drawn.shape == image.shape
  assert drawn.any() and not image.any()
  none = proposal.draw_regions(image, masks, np.zeros(8, bool))
  assert not none.any()


def test_bad_inputs_raise():
  image = np.zeros(IMAGE_SIZE + (3,), np.uint8)
  with pytest.raises(ValueError):
    proposal.propose(image, np.zeros(6), backend='hesaff')
  with pytest.raises(ValueError):
    proposal.propose(image, np.zeros(GRID, np.float32), backend='sift')
  with pytest.raises(ValueError):
    proposal.propose_batch(
      image, np.zeros(GRID), np.ones(GRID, bool), [[96, 128]]
    )
  with pytest.raises(ValueError, match='backend'):
    proposal.propose_batch(
      image[None],
      np.zeros((1,) + GRID),
      np.ones((1,) + GRID, bool),
      [[96, 128]],
      backend='sift',
    )


def test_same_shape_images_compile_once():
  pytest.importorskip('pyhesaff')
  alpha = np.random.default_rng(6).uniform(0, 1, GRID).astype(np.float32)
  proposal.propose(_test_image(7), alpha, n_max=48, n_min=8)
  before = proposal._regions_from_points._cache_size()  # pylint: disable=protected-access
  for seed in (8, 9):
    proposal.propose(_test_image(seed), alpha, n_max=48, n_min=8)
  assert proposal._regions_from_points._cache_size() == before  # pylint: disable=protected-access
