"""Tests for regagg_jax.regions.proposal (options, detector backend, candidate
regions of one image or a padded batch, Sec. 2).

The masks themselves are tested in test_region_masks.py.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from configs import default
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import keypoints
from regagg_jax.regions import proposal
from tests.regions.test_hulls import GRID, IMAGE_SIZE
from tests.regions.test_keypoints import _noise_image

_SMALL = proposal.RegionOptions(n_max=64, n_min=8)  # backend 'hesaff'


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
  masks, valid = proposal.propose(image, alpha, options=_SMALL)
  assert masks.shape == (8,) + GRID and masks.dtype == bool
  assert valid.shape == (8,) and bool(valid[-1])
  # The hesaff batch: each image proposed on its own area, on the host; the
  # third is a padding image (size 0) and gets no valid region.
  padded = np.zeros((3, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = image
  padded[1, :96, :128] = image[::-1]
  padded_alpha = np.zeros((3, 8, 10), np.float32)
  padded_alpha[:2, :6, :8] = alpha
  cells = np.zeros((3, 8, 10), bool)
  cells[:2, :6, :8] = True
  sizes = [[96, 128], [96, 128], [0, 0]]
  batch_masks, batch_valid = proposal.propose_batch(
    padded, padded_alpha, cells, sizes, options=_SMALL
  )
  assert batch_masks.shape == (3, 8, 8, 10) and batch_valid.shape == (3, 8)
  flipped_masks, flipped_valid = proposal.propose(
    image[::-1], alpha, options=_SMALL
  )
  np.testing.assert_array_equal(
    batch_masks[1, :, :6, :8], np.asarray(flipped_masks)
  )
  np.testing.assert_array_equal(batch_valid[1], np.asarray(flipped_valid))
  assert not batch_valid[2].any() and not batch_masks[2].any()
  np.testing.assert_array_equal(
    np.asarray(batch_masks)[0, :, :6, :8], np.asarray(masks)
  )
  np.testing.assert_array_equal(np.asarray(batch_valid)[0], np.asarray(valid))
  assert not np.asarray(batch_masks)[:, :, 6:].any()
  # min_cells passes through: only the whole image survives a huge minimum.
  _, strict = proposal.propose(
    image, alpha, options=_SMALL._replace(min_cells=10**6)
  )
  np.testing.assert_array_equal(np.asarray(strict), [False] * 7 + [True])


def test_propose_jax_backend_end_to_end():
  image = _test_image(3)
  alpha = np.random.default_rng(4).uniform(0, 1, GRID).astype(np.float32)
  options = _SMALL._replace(backend='jax')
  masks, valid = proposal.propose(image, alpha, options=options)
  assert masks.shape == (8,) + GRID and bool(valid[-1])
  assert np.asarray(masks)[-1].all()
  padded = np.zeros((1, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = image
  cells = np.zeros((1, 8, 10), bool)
  cells[0, :6, :8] = True
  padded_alpha = np.zeros((1, 8, 10), np.float32)
  padded_alpha[0, :6, :8] = alpha
  batch_masks, batch_valid = proposal.propose_batch(
    padded, padded_alpha, cells, [[96, 128]], options=options
  )
  assert batch_masks.shape == (1, 8, 8, 10) and bool(batch_valid[0, -1])
  assert not np.asarray(batch_masks)[0][:, ~cells[0]].any()
  np.testing.assert_array_equal(
    np.asarray(batch_masks)[0, :, :6, :8], np.asarray(masks)
  )
  np.testing.assert_array_equal(np.asarray(batch_valid)[0], np.asarray(valid))
  # The fused detection + selection equals detecting every point first.
  points, valid_points = proposal.detect(image, backend='jax')
  want_masks, want_valid = proposal._regions_from_points(  # pylint: disable=protected-access
    points,
    valid_points,
    jnp.asarray(alpha),
    jnp.ones(GRID, bool),
    jnp.asarray(IMAGE_SIZE),
    padded_shape=IMAGE_SIZE,
    options=options,
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
  options = proposal.RegionOptions(backend='jax', n_max=64, n_min=8)
  assert proposal.is_traceable(options)
  eager_masks, eager_valid = proposal.propose_batch(
    padded, alpha, cells, sizes, options=options
  )
  traced = jax.jit(
    lambda *arrays: proposal.propose_batch(*arrays, options=options)
  )
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


def test_bad_inputs_raise():
  image = np.zeros(IMAGE_SIZE + (3,), np.uint8)
  with pytest.raises(ValueError):
    proposal.propose(image, np.zeros(6))
  with pytest.raises(ValueError):
    proposal.propose(
      image,
      np.zeros(GRID, np.float32),
      options=proposal.RegionOptions(backend='sift'),
    )
  with pytest.raises(TypeError, match='RegionOptions'):
    proposal.propose(
      image, np.zeros(GRID, np.float32), options={'backend': 'jax'}
    )
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
      options=proposal.RegionOptions(backend='sift'),
    )


def test_same_shape_images_compile_once():
  pytest.importorskip('pyhesaff')
  alpha = np.random.default_rng(6).uniform(0, 1, GRID).astype(np.float32)
  options = proposal.RegionOptions(n_max=48, n_min=8)
  proposal.propose(_test_image(7), alpha, options=options)
  before = proposal._regions_from_points._cache_size()  # pylint: disable=protected-access
  for seed in (8, 9):
    proposal.propose(_test_image(seed), alpha, options=options)
  assert proposal._regions_from_points._cache_size() == before  # pylint: disable=protected-access


def test_region_options_defaults_are_the_configs_and_hashable():
  regions = default.get_config().regions
  options = proposal.RegionOptions()
  for field in options._fields:
    if field in regions:
      assert getattr(options, field) == regions[field], field
  assert hash(options) == hash(proposal.RegionOptions())
  assert not proposal.is_traceable(options)
  assert proposal.is_traceable(options._replace(backend='jax'))
  with pytest.raises(ValueError, match='backend'):
    proposal.is_traceable(options._replace(backend='sift'))


def test_detect_dispatches_to_either_backend():
  image = _noise_image()
  want = hessian_affine.detect_hessian_affine(jnp.asarray(image), max_points=32)
  got = proposal.detect_shapes(image, backend='jax', max_points=32)
  for got_array, want_array in zip(got, want):
    np.testing.assert_array_equal(np.asarray(got_array), np.asarray(want_array))
  points, valid = proposal.detect(image, backend='jax', max_points=32)
  np.testing.assert_array_equal(np.asarray(points), np.asarray(want[0]))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(want[2]))
  with pytest.raises(ValueError, match='backend'):
    proposal.detect(image, backend='sift')
  with pytest.raises(TypeError):
    proposal.detect(np.zeros((8, 8, 3), np.float32), backend='jax')
  pytest.importorskip('pyhesaff')
  want = keypoints.detect_hesaff(image, pad_multiple=64)
  got = proposal.detect_shapes(image, pad_multiple=64)  # 'hesaff'
  for got_array, want_array in zip(got, want):
    np.testing.assert_array_equal(np.asarray(got_array), np.asarray(want_array))
