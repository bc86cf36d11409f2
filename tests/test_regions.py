"""Tests for regagg_jax.regions (2^L convex-hull candidate regions, Sec. 2)."""

import functools

import numpy as np
import pytest
from scipy.spatial import ConvexHull, Delaunay, QhullError

import jax
import jax.numpy as jnp

from regagg_jax import keypoints
from regagg_jax import regions

IMAGE_SIZE = (96, 128)  # H_I, W_I: 16-pixel cells, centres at 8, 24, ...
GRID = (6, 8)


def _centres(grid=GRID, image_size=IMAGE_SIZE):
  rows, columns = np.mgrid[:grid[0], :grid[1]].astype(np.float64)
  return np.stack([(columns + 0.5) * image_size[1] / grid[1],
                   (rows + 0.5) * image_size[0] / grid[0]], -1).reshape(-1, 2)


def _reference_mask(points, grid=GRID, image_size=IMAGE_SIZE, tol=1e-6):
  """scipy: ConvexHull + Delaunay.find_simplex on cell centres (float64).

  Degenerate sets (Qhull refuses them) are the cell centres on the segment
  between the extreme points (or on the single point).
  """
  centres = _centres(grid, image_size)
  points = np.unique(np.asarray(points, np.float64), axis=0)
  if len(points) == 0:
    inside = np.zeros(len(centres), bool)
  else:
    try:
      hull = ConvexHull(points)
      inside = Delaunay(points[hull.vertices]).find_simplex(centres,
                                                            tol=tol) >= 0
    except (QhullError, ValueError):
      start = points[np.lexsort((points[:, 1], points[:, 0]))[0]]
      end = points[np.lexsort((points[:, 1], points[:, 0]))[-1]]
      direction = end - start
      length2 = max(direction @ direction, 1e-300)
      t = np.clip((centres - start) @ direction / length2, 0, 1)
      inside = np.linalg.norm(start + t[:, None] * direction - centres,
                              axis=1) <= 1e-3
  return inside.reshape(grid)


def _rasterise(point_sets, num_points, grid=GRID, image_size=IMAGE_SIZE,
               padding=0.0):
  """Pads the sets to num_points and rasterises them with one jitted call."""
  points = np.full((num_points, 2), padding, np.float32)
  members = np.zeros((len(point_sets), num_points), bool)
  offset = 0
  for index, subset in enumerate(point_sets):
    points[offset:offset + len(subset)] = subset
    members[index, offset:offset + len(subset)] = True
    offset += len(subset)
  fn = jax.jit(regions.rasterise_hulls, static_argnames=("grid_shape",))
  masks, areas = fn(jnp.asarray(points), jnp.asarray(members),
                    jnp.asarray(grid), jnp.asarray(image_size),
                    grid_shape=grid)
  return np.asarray(masks), np.asarray(areas)


def _random_sets():
  rng = np.random.default_rng(0)
  sets = []
  for size in (3, 4, 6, 10, 25):
    sets.append(rng.uniform(-10, 140, (size, 2)))           # real-valued
    sets.append(rng.integers(0, 128, (size, 2)).astype(float))  # on-edge ties
  sets.append(np.array([[8.0, 8.0], [120.0, 8.0], [120.0, 88.0], [8.0, 88.0],
                        [50.0, 40.0]]))                       # corners on centres
  return sets


def _degenerate_sets():
  return [np.zeros((0, 2)),
          np.array([[24.0, 40.0]]),                  # one point on a centre
          np.array([[30.0, 30.0]]),                  # one point off centres
          np.array([[8.0, 24.0], [104.0, 24.0]]),   # segment along a row
          np.array([[40.0, 8.0], [40.0, 88.0], [40.0, 50.0]]),  # vertical
          np.array([[8.0, 8.0], [24.0, 24.0], [56.0, 56.0], [88.0, 88.0]]),
          np.array([[5.0, 7.0], [5.0, 7.0], [5.0, 7.0]]),  # duplicates
          np.array([[3.0, 1.0], [60.0, 33.0]])]


def test_hull_masks_equal_scipy_reference():
  sets = _random_sets() + _degenerate_sets()
  masks, areas = _rasterise(sets, sum(len(s) for s in sets) + 7)
  assert masks.dtype == bool and masks.shape == (len(sets),) + GRID
  for index, subset in enumerate(sets):
    np.testing.assert_array_equal(masks[index], _reference_mask(subset),
                                  err_msg=f"set {index}: {subset}")
    if len(subset) >= 3 and index < len(_random_sets()):
      np.testing.assert_allclose(areas[index], ConvexHull(subset).volume,
                                 rtol=1e-4)
  assert np.all(areas[len(_random_sets()):] < 1e-3)


def _boundary_distance(points, grid, image_size):
  """float64 (H, W) distance of each cell centre to the hull's boundary."""
  points = np.asarray(points, np.float64)
  hull = points[ConvexHull(points).vertices]
  start, end = hull, np.roll(hull, -1, axis=0)
  centres = _centres(grid, image_size)[:, None]
  direction = end - start
  t = np.clip(np.sum((centres - start) * direction, -1)
              / np.sum(direction ** 2, -1), 0, 1)
  gaps = np.linalg.norm(start + t[..., None] * direction - centres, axis=-1)
  return gaps.min(axis=1).reshape(grid)


def _large_sets(rng):
  """Point sets of 200 .. 1500 points: clusters, uniform, thin, off-image."""
  width, height = 1024.0, 768.0
  sets = [rng.normal((300, 250), (120, 80), (1500, 2)),       # a cluster
          rng.normal((700, 500), 40, (400, 2)),                # a tight one
          rng.uniform((0, 0), (width, height), (1000, 2)),     # everywhere
          rng.uniform(-300, 1300, (200, 2)),                   # off the image
          np.stack([rng.uniform(500, 500.7, 300),              # near vertical
                    rng.uniform(100, 700, 300)], -1),
          np.stack([rng.uniform(50, 1000, 300),                # near horizontal
                    rng.uniform(383.6, 384.2, 300)], -1)]
  angle = rng.uniform(0, 2 * np.pi, 600)                       # all on a circle
  sets.append(np.stack([512 + 300 * np.cos(angle),
                        384 + 300 * np.sin(angle)], -1))
  return [s.astype(np.float32) for s in sets]


def test_large_padded_sets_equal_scipy_reference():
  # Real-valued points: cells within 0.01 px of the hull's boundary may go
  # either way in float32 (the cell test tolerance is 1e-3 px); all the
  # others must equal the float64 reference.
  # The circle (all points on the hull) does not fit the packed candidates:
  # alone it takes the every-point branch, the others the packed one.
  grid, image_size = (48, 64), (768, 1024)
  sets = _large_sets(np.random.default_rng(5))
  for group, fit in ((sets[:-1], True), (sets[-1:], False)):
    num_points = sum(map(len, group)) + 96
    points = np.zeros((num_points, 2), np.float32)
    points[:num_points - 96] = np.concatenate(group)
    members = np.zeros((len(group), num_points), bool)
    members[:, :num_points - 96] = np.repeat(
        np.eye(len(group), dtype=bool), [len(s) for s in group], axis=1)
    polygons = regions._support_polygon(points, members)  # pylint: disable=protected-access
    assert bool(regions._compact_candidates(  # pylint: disable=protected-access
        points, members, polygons)[2]) == fit
  for padding in (0.0, 1e6):
    masks, areas = _rasterise(sets[:-1], sum(map(len, sets)) + 96, grid,
                              image_size, padding)
    circle_masks, circle_areas = _rasterise(sets[-1:], 4000, grid, image_size,
                                            padding)
    masks = np.concatenate([masks, circle_masks])
    areas = np.concatenate([areas, circle_areas])
    for index, subset in enumerate(sets):
      want = _reference_mask(subset, grid, image_size)
      sure = _boundary_distance(subset, grid, image_size) > 1e-2
      np.testing.assert_array_equal(masks[index][sure], want[sure],
                                    err_msg=f"set {index}")
      assert np.sum(~sure) <= 2, f"set {index}: too many boundary cells"
      hull = ConvexHull(subset.astype(np.float64)).volume
      assert hull / 1.125 * (1 - 1e-5) <= areas[index] <= hull * (1 + 1e-5)


def test_integer_steep_and_flat_edges_equal_scipy_reference():
  # Edges one pixel off vertical or horizontal, corners on cell centres,
  # centres exactly on edges (16-pixel cells, centres at 8 + 16 k).
  sets = [np.array([[40.0, 8.0], [41.0, 88.0], [120.0, 40.0]]),
          np.array([[40.0, 8.0], [39.0, 88.0], [8.0, 40.0]]),
          np.array([[8.0, 40.0], [120.0, 41.0], [60.0, 90.0]]),
          np.array([[8.0, 40.0], [120.0, 39.0], [60.0, 2.0]]),
          np.array([[8.0, 8.0], [8.0, 88.0], [24.0, 88.0], [24.0, 8.0],
                    [16.0, 50.0]]),                        # vertical sides
          np.array([[0.0, 0.0], [128.0, 96.0], [0.0, 96.0], [64.0, 48.0],
                    [32.0, 24.0]]),                       # collinear on hull
          np.array([[-50.0, -40.0], [200.0, 30.0], [60.0, 150.0]])]
  rng = np.random.default_rng(7)
  sets += [rng.integers(-20, 150, (n, 2)).astype(float) for n in (50, 300)]
  masks, areas = _rasterise(sets, 1024)
  for index, subset in enumerate(sets):
    np.testing.assert_array_equal(masks[index], _reference_mask(subset),
                                  err_msg=f"set {index}: {subset}")
    np.testing.assert_allclose(areas[index], ConvexHull(subset).volume,
                               rtol=1e-5)


def test_support_area_bound_and_degenerate_zero():
  # Inscribed polygon: area <= hull <= 1.125 area on sets with many hull
  # vertices (the bound of regions._support_area, 4 rounds); 0 on degenerate.
  rng = np.random.default_rng(11)
  sets = []
  for size in (5, 40, 300):
    sets.append(rng.uniform(0, 500, (size, 2)))
    angle = np.sort(rng.uniform(0, 2 * np.pi, size))
    radius = rng.uniform(0.999, 1.0, size) * 200
    sets.append(np.stack([radius * np.cos(angle), 3 * radius * np.sin(angle)],
                         -1) + 250)                        # nearly convex
    sets.append(np.stack([rng.uniform(0, 500, size),
                          rng.uniform(0, 0.5, size)], -1))  # sliver
  degenerate = [np.array([[3.0, 4.0]] * 4), np.array([[3.0, 4.0], [9.0, 1.0]]),
                np.array([[0.0, 0.0], [2.0, 1.0], [6.0, 3.0], [40.0, 20.0]])]
  masks_points = sets + degenerate
  _, areas = _rasterise(masks_points, 2000)
  for index, subset in enumerate(sets):
    hull = ConvexHull(subset).volume
    assert areas[index] <= hull * (1 + 1e-4) + 1e-3, index
    assert hull <= 1.125 * areas[index] * (1 + 1e-4) + 1e-3, index
  np.testing.assert_array_equal(areas[len(sets):], 0.0)


def test_vmapped_batch_with_one_overflow_equals_single_images():
  # A vmapped batch takes one branch for all images (custom_vmap): every
  # point when any image's candidates overflow; results must not change.
  rng = np.random.default_rng(21)
  angle = rng.uniform(0, 2 * np.pi, 400)
  ring = np.stack([64 + 60 * np.cos(angle), 48 + 45 * np.sin(angle)], -1)
  blob = rng.normal((60, 50), 20, (400, 2))
  batch = np.stack([ring, blob]).astype(np.float32)
  members = np.ones((2, 3, 400), bool)
  members[:, 0, 200:] = False
  members[:, 1, :200] = False
  fn = functools.partial(regions.rasterise_hulls, grid_shape=GRID)
  args = (jnp.asarray(GRID), jnp.asarray(IMAGE_SIZE))
  masks, areas = jax.jit(jax.vmap(fn, in_axes=(0, 0, None, None)))(
      jnp.asarray(batch), jnp.asarray(members), *args)
  for image in range(2):
    one_masks, one_areas = jax.jit(fn)(jnp.asarray(batch[image]),
                                       jnp.asarray(members[image]), *args)
    np.testing.assert_array_equal(np.asarray(masks[image]),
                                  np.asarray(one_masks))
    np.testing.assert_array_equal(np.asarray(areas[image]),
                                  np.asarray(one_areas))
    for subset in range(3):
      np.testing.assert_array_equal(
          np.asarray(one_masks[subset]),
          _reference_mask(batch[image][members[image, subset]]))


def _loops(jaxpr):
  """(primitive, trip count) of every scan / while in a jaxpr, nested."""
  found = []
  for equation in jaxpr.eqns:
    if equation.primitive.name in ("scan", "while"):
      found.append((equation.primitive.name,
                    equation.params.get("length")))
    for value in equation.params.values():
      for inner in value if isinstance(value, (tuple, list)) else [value]:
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):  # cond branches, custom_vmap, pjit ...
          found += _loops(inner)
  return found


def test_rasterise_has_no_loop_growing_with_points():
  def trace(num_points):
    points = jnp.zeros((num_points, 2), jnp.float32)
    members = jnp.zeros((7, num_points), bool)
    return jax.make_jaxpr(lambda p, m: regions.rasterise_hulls(
        p, m, jnp.asarray((48, 64)), jnp.asarray((768, 1024)),
        grid_shape=(48, 64)))(points, members).jaxpr

  small, large = trace(64), trace(4096)
  assert _loops(small) == _loops(large)
  assert len(small.eqns) == len(large.eqns)
  assert all(name == "scan" and length <= 32
             for name, length in _loops(large)), _loops(large)


def test_power_set_order_and_members():
  labels = jnp.asarray([0, 1, 2, -1, 1], jnp.int32)
  members = np.asarray(regions.subset_members(labels, num_clusters=3))
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
  fn = jax.jit(regions.compute_region_masks, static_argnames=("num_clusters",))
  masks, valid = fn(jnp.asarray(points), jnp.asarray(labels),
                    jnp.ones(GRID, bool), jnp.asarray(IMAGE_SIZE),
                    num_clusters=3)
  masks, valid = np.asarray(masks), np.asarray(valid)
  assert masks.shape == (8,) + GRID and valid.shape == (8,)
  for m in range(1, 8):
    subset = points[(labels >= 0) & ((m >> np.maximum(labels, 0)) & 1 == 1)]
    want = _reference_mask(subset)
    assert valid[m - 1] == (want.sum() >= 1)
    np.testing.assert_array_equal(masks[m - 1], want & valid[m - 1])
  assert valid[-1] and masks[-1].all()


def test_degenerate_and_tiny_regions_are_invalid():
  # Cluster 0 collinear along a row of centres, cluster 1 a single point on a
  # centre, cluster 2 a proper triangle.
  points = np.array([[8, 24], [40, 24], [72, 24], [24, 72], [70, 50],
                     [120, 50], [100, 90]], np.float32)
  labels = np.array([0, 0, 0, 1, 2, 2, 2], np.int32)
  fn = jax.jit(regions.compute_region_masks,
               static_argnames=("num_clusters", "min_cells"))
  masks, valid = fn(
      jnp.asarray(points), jnp.asarray(labels), jnp.ones(GRID, bool),
      jnp.asarray(IMAGE_SIZE), num_clusters=3)
  masks, valid = np.asarray(masks), np.asarray(valid)
  np.testing.assert_array_equal(valid, [False, False, True, True, True, True,
                                        True, True])
  assert not masks[0].any() and not masks[1].any()
  # A larger min_cells discards the small triangle too.
  _, valid = fn(
      jnp.asarray(points), jnp.asarray(labels), jnp.ones(GRID, bool),
      jnp.asarray(IMAGE_SIZE), num_clusters=3, min_cells=1000)
  np.testing.assert_array_equal(np.asarray(valid), [False] * 7 + [True])


def test_padded_grid_matches_unpadded():
  points, labels = _cluster_points(1)
  fn = jax.jit(regions.compute_region_masks, static_argnames=("num_clusters",))
  masks, valid = fn(jnp.asarray(points), jnp.asarray(labels),
                    jnp.ones(GRID, bool), jnp.asarray(IMAGE_SIZE),
                    num_clusters=3)
  padded_cells = np.zeros((9, 11), bool)
  padded_cells[:GRID[0], :GRID[1]] = True
  extra = np.random.default_rng(2).uniform(0, 200, (9, 2)).astype(np.float32)
  padded_masks, padded_valid = fn(
      jnp.asarray(np.concatenate([points, extra])),
      jnp.asarray(np.concatenate([labels, -np.ones(9, np.int32)])),
      jnp.asarray(padded_cells), jnp.asarray(IMAGE_SIZE), num_clusters=3)
  np.testing.assert_array_equal(np.asarray(padded_valid), np.asarray(valid))
  np.testing.assert_array_equal(
      np.asarray(padded_masks)[:, :GRID[0], :GRID[1]], np.asarray(masks))
  assert not np.asarray(padded_masks)[:, GRID[0]:].any()
  assert not np.asarray(padded_masks)[:, :, GRID[1]:].any()


def _test_image(seed=0):
  rng = np.random.default_rng(seed)
  image = np.full(IMAGE_SIZE + (3,), 200, np.uint8)
  for _ in range(25):
    x, y = rng.integers(8, 120), rng.integers(8, 88)
    image[max(0, y - 3):y + 3, max(0, x - 3):x + 3] = rng.integers(0, 80)
  return image


def test_propose_and_batch_agree():
  pytest.importorskip("pyhesaff")
  image = _test_image()
  alpha = np.random.default_rng(1).uniform(0, 1, GRID).astype(np.float32)
  masks, valid = regions.propose(image, alpha, n_max=64, n_min=8)
  assert masks.shape == (8,) + GRID and masks.dtype == bool
  assert valid.shape == (8,) and bool(valid[-1])
  padded = np.zeros((2, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = image
  padded[1, :96, :128] = image[::-1]
  padded_alpha = np.zeros((2, 8, 10), np.float32)
  padded_alpha[:, :6, :8] = alpha
  cells = np.zeros((2, 8, 10), bool)
  cells[:, :6, :8] = True
  batch_masks, batch_valid = regions.propose_batch(
      padded, padded_alpha, cells, [[96, 128], [96, 128]], n_max=64, n_min=8)
  assert batch_masks.shape == (2, 8, 8, 10)
  np.testing.assert_array_equal(np.asarray(batch_masks)[0, :, :6, :8],
                                np.asarray(masks))
  np.testing.assert_array_equal(np.asarray(batch_valid)[0], np.asarray(valid))
  assert not np.asarray(batch_masks)[:, :, 6:].any()
  # min_cells passes through: only the whole image survives a huge minimum.
  _, strict = regions.propose(image, alpha, n_max=64, n_min=8,
                              min_cells=10 ** 6)
  np.testing.assert_array_equal(np.asarray(strict), [False] * 7 + [True])


def test_propose_jax_backend_end_to_end():
  image = _test_image(3)
  alpha = np.random.default_rng(4).uniform(0, 1, GRID).astype(np.float32)
  masks, valid = regions.propose(image, alpha, backend="jax", n_max=64,
                                 n_min=8)
  assert masks.shape == (8,) + GRID and bool(valid[-1])
  assert np.asarray(masks)[-1].all()
  padded = np.zeros((1, 128, 160, 3), np.uint8)
  padded[0, :96, :128] = image
  cells = np.zeros((1, 8, 10), bool)
  cells[0, :6, :8] = True
  padded_alpha = np.zeros((1, 8, 10), np.float32)
  padded_alpha[0, :6, :8] = alpha
  batch_masks, batch_valid = regions.propose_batch(
      padded, padded_alpha, cells, [[96, 128]], backend="jax", n_max=64,
      n_min=8)
  assert batch_masks.shape == (1, 8, 8, 10) and bool(batch_valid[0, -1])
  assert not np.asarray(batch_masks)[0][:, ~cells[0]].any()
  np.testing.assert_array_equal(np.asarray(batch_masks)[0, :, :6, :8],
                                np.asarray(masks))
  np.testing.assert_array_equal(np.asarray(batch_valid)[0], np.asarray(valid))
  # The fused detection + selection equals detecting every point first.
  points, valid_points = keypoints.detect(image, backend="jax")
  want_masks, want_valid = regions._regions_from_points(  # pylint: disable=protected-access
      points, valid_points, jnp.asarray(alpha), jnp.ones(GRID, bool),
      jnp.asarray(IMAGE_SIZE), padded_shape=IMAGE_SIZE, n_max=64, n_min=8,
      num_clusters=3, min_cells=1)
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
  options = dict(backend="jax", n_max=64, n_min=8, num_clusters=3)
  eager_masks, eager_valid = regions.propose_batch(padded, alpha, cells, sizes,
                                                   **options)
  traced = jax.jit(lambda *arrays: regions.propose_batch(*arrays, **options))
  masks, valid = traced(jnp.asarray(padded), jnp.asarray(alpha),
                        jnp.asarray(cells), jnp.asarray(sizes))
  assert masks.shape == (2, 8, 8, 10) and valid.shape == (2, 8)
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(eager_masks))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(eager_valid))
  assert np.asarray(valid)[:, -1].all() and np.asarray(valid)[:, :-1].any()
  assert not np.asarray(masks)[:, :, ~cells.any(axis=0)].any()
  assert not np.asarray(masks)[1][:, ~cells[1]].any()


def test_draw_regions_outlines():
  points, labels = _cluster_points()
  masks, valid = regions.compute_region_masks(
      jnp.asarray(points), jnp.asarray(labels), jnp.ones(GRID, bool),
      jnp.asarray(IMAGE_SIZE), num_clusters=3)
  image = np.zeros(IMAGE_SIZE + (3,), np.uint8)
  drawn = regions.draw_regions(image, masks, valid, points=points)
  assert drawn.dtype == np.uint8 and drawn.shape == image.shape
  assert drawn.any() and not image.any()
  none = regions.draw_regions(image, masks, np.zeros(8, bool))
  assert not none.any()


def test_bad_inputs_raise():
  image = np.zeros(IMAGE_SIZE + (3,), np.uint8)
  with pytest.raises(ValueError):
    regions.propose(image, np.zeros(6), backend="hesaff")
  with pytest.raises(ValueError):
    regions.propose(image, np.zeros(GRID, np.float32), backend="sift")
  with pytest.raises(ValueError):
    regions.propose_batch(image, np.zeros(GRID), np.ones(GRID, bool),
                          [[96, 128]])
  with pytest.raises(ValueError, match="backend"):
    regions.propose_batch(image[None], np.zeros((1,) + GRID),
                          np.ones((1,) + GRID, bool), [[96, 128]],
                          backend="sift")


def test_same_shape_images_compile_once():
  pytest.importorskip("pyhesaff")
  alpha = np.random.default_rng(6).uniform(0, 1, GRID).astype(np.float32)
  regions.propose(_test_image(7), alpha, n_max=48, n_min=8)
  before = regions._regions_from_points._cache_size()  # pylint: disable=protected-access
  for seed in (8, 9):
    regions.propose(_test_image(seed), alpha, n_max=48, n_min=8)
  assert regions._regions_from_points._cache_size() == before  # pylint: disable=protected-access
