"""Tests for regagg_jax.regions.hulls (convex hulls rasterised on the grid, Sec. 2).

Every mask is checked against a float64 scipy reference (ConvexHull +
Delaunay.find_simplex on the cell centres), `reference_mask`, which
test_regions.py imports too.
"""

import functools

import numpy as np
from scipy.spatial import ConvexHull, Delaunay, QhullError

import jax
import jax.numpy as jnp

from regagg_jax.regions import hulls

IMAGE_SIZE = (96, 128)  # H_I, W_I: 16-pixel cells, centres at 8, 24, ...
GRID = (6, 8)


def _centres(grid=GRID, image_size=IMAGE_SIZE):
  rows, columns = np.mgrid[: grid[0], : grid[1]].astype(np.float64)
  return np.stack(
    [
      (columns + 0.5) * image_size[1] / grid[1],
      (rows + 0.5) * image_size[0] / grid[0],
    ],
    -1,
  ).reshape(-1, 2)


def reference_mask(points, grid=GRID, image_size=IMAGE_SIZE, tol=1e-6):
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
      inside = (
        Delaunay(points[hull.vertices]).find_simplex(centres, tol=tol) >= 0
      )
    except (QhullError, ValueError):
      start = points[np.lexsort((points[:, 1], points[:, 0]))[0]]
      end = points[np.lexsort((points[:, 1], points[:, 0]))[-1]]
      direction = end - start
      length2 = max(direction @ direction, 1e-300)
      t = np.clip((centres - start) @ direction / length2, 0, 1)
      inside = (
        np.linalg.norm(start + t[:, None] * direction - centres, axis=1) <= 1e-3
      )
  return inside.reshape(grid)


def _rasterise(
  point_sets, num_points, grid=GRID, image_size=IMAGE_SIZE, padding=0.0
):
  """Pads the sets to num_points and rasterises them with one jitted call."""
  points = np.full((num_points, 2), padding, np.float32)
  members = np.zeros((len(point_sets), num_points), bool)
  offset = 0
  for index, subset in enumerate(point_sets):
    points[offset : offset + len(subset)] = subset
    members[index, offset : offset + len(subset)] = True
    offset += len(subset)
  fn = jax.jit(hulls.rasterise_hulls, static_argnames=('grid_shape',))
  masks, areas = fn(
    jnp.asarray(points),
    jnp.asarray(members),
    jnp.asarray(grid),
    jnp.asarray(image_size),
    grid_shape=grid,
  )
  return np.asarray(masks), np.asarray(areas)


def _random_sets():
  rng = np.random.default_rng(0)
  sets = []
  for size in (3, 4, 6, 10, 25):
    sets.append(rng.uniform(-10, 140, (size, 2)))  # real-valued
    sets.append(rng.integers(0, 128, (size, 2)).astype(float))  # on-edge ties
  sets.append(
    np.array(
      [[8.0, 8.0], [120.0, 8.0], [120.0, 88.0], [8.0, 88.0], [50.0, 40.0]]
    )
  )  # corners on centres
  return sets


def _degenerate_sets():
  return [
    np.zeros((0, 2)),
    np.array([[24.0, 40.0]]),  # one point on a centre
    np.array([[30.0, 30.0]]),  # one point off centres
    np.array([[8.0, 24.0], [104.0, 24.0]]),  # segment along a row
    np.array([[40.0, 8.0], [40.0, 88.0], [40.0, 50.0]]),  # vertical
    np.array([[8.0, 8.0], [24.0, 24.0], [56.0, 56.0], [88.0, 88.0]]),
    np.array([[5.0, 7.0], [5.0, 7.0], [5.0, 7.0]]),  # duplicates
    np.array([[3.0, 1.0], [60.0, 33.0]]),
  ]


def test_hull_masks_equal_scipy_reference():
  sets = _random_sets() + _degenerate_sets()
  masks, areas = _rasterise(sets, sum(len(s) for s in sets) + 7)
  assert masks.dtype == bool and masks.shape == (len(sets),) + GRID
  for index, subset in enumerate(sets):
    np.testing.assert_array_equal(
      masks[index], reference_mask(subset), err_msg=f'set {index}: {subset}'
    )
    if len(subset) >= 3 and index < len(_random_sets()):
      np.testing.assert_allclose(
        areas[index], ConvexHull(subset).volume, rtol=1e-4
      )
  assert np.all(areas[len(_random_sets()) :] < 1e-3)


def _boundary_distance(points, grid, image_size):
  """float64 (H, W) distance of each cell centre to the hull's boundary."""
  points = np.asarray(points, np.float64)
  hull = points[ConvexHull(points).vertices]
  start, end = hull, np.roll(hull, -1, axis=0)
  centres = _centres(grid, image_size)[:, None]
  direction = end - start
  t = np.clip(
    np.sum((centres - start) * direction, -1) / np.sum(direction**2, -1), 0, 1
  )
  gaps = np.linalg.norm(start + t[..., None] * direction - centres, axis=-1)
  return gaps.min(axis=1).reshape(grid)


def _large_sets(rng):
  """Point sets of 200 .. 1500 points: clusters, uniform, thin, off-image."""
  width, height = 1024.0, 768.0
  sets = [
    rng.normal((300, 250), (120, 80), (1500, 2)),  # a cluster
    rng.normal((700, 500), 40, (400, 2)),  # a tight one
    rng.uniform((0, 0), (width, height), (1000, 2)),  # everywhere
    rng.uniform(-300, 1300, (200, 2)),  # off the image
    np.stack(
      [
        rng.uniform(500, 500.7, 300),  # near vertical
        rng.uniform(100, 700, 300),
      ],
      -1,
    ),
    np.stack(
      [
        rng.uniform(50, 1000, 300),  # near horizontal
        rng.uniform(383.6, 384.2, 300),
      ],
      -1,
    ),
  ]
  angle = rng.uniform(0, 2 * np.pi, 600)  # all on a circle
  sets.append(
    np.stack([512 + 300 * np.cos(angle), 384 + 300 * np.sin(angle)], -1)
  )
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
    points[: num_points - 96] = np.concatenate(group)
    members = np.zeros((len(group), num_points), bool)
    members[:, : num_points - 96] = np.repeat(
      np.eye(len(group), dtype=bool), [len(s) for s in group], axis=1
    )
    polygons = hulls._support_polygon(points, members)  # pylint: disable=protected-access
    assert (
      bool(
        hulls._compact_candidates(  # pylint: disable=protected-access
          points, members, polygons
        )[2]
      )
      == fit
    )
  for padding in (0.0, 1e6):
    masks, areas = _rasterise(
      sets[:-1], sum(map(len, sets)) + 96, grid, image_size, padding
    )
    circle_masks, circle_areas = _rasterise(
      sets[-1:], 4000, grid, image_size, padding
    )
    masks = np.concatenate([masks, circle_masks])
    areas = np.concatenate([areas, circle_areas])
    for index, subset in enumerate(sets):
      want = reference_mask(subset, grid, image_size)
      sure = _boundary_distance(subset, grid, image_size) > 1e-2
      np.testing.assert_array_equal(
        masks[index][sure], want[sure], err_msg=f'set {index}'
      )
      assert np.sum(~sure) <= 2, f'set {index}: too many boundary cells'
      hull = ConvexHull(subset.astype(np.float64)).volume
      assert hull / 1.125 * (1 - 1e-5) <= areas[index] <= hull * (1 + 1e-5)


def test_integer_steep_and_flat_edges_equal_scipy_reference():
  # Edges one pixel off vertical or horizontal, corners on cell centres,
  # centres exactly on edges (16-pixel cells, centres at 8 + 16 k).
  sets = [
    np.array([[40.0, 8.0], [41.0, 88.0], [120.0, 40.0]]),
    np.array([[40.0, 8.0], [39.0, 88.0], [8.0, 40.0]]),
    np.array([[8.0, 40.0], [120.0, 41.0], [60.0, 90.0]]),
    np.array([[8.0, 40.0], [120.0, 39.0], [60.0, 2.0]]),
    np.array(
      [[8.0, 8.0], [8.0, 88.0], [24.0, 88.0], [24.0, 8.0], [16.0, 50.0]]
    ),  # vertical sides
    np.array(
      [[0.0, 0.0], [128.0, 96.0], [0.0, 96.0], [64.0, 48.0], [32.0, 24.0]]
    ),  # collinear on hull
    np.array([[-50.0, -40.0], [200.0, 30.0], [60.0, 150.0]]),
  ]
  rng = np.random.default_rng(7)
  sets += [rng.integers(-20, 150, (n, 2)).astype(float) for n in (50, 300)]
  masks, areas = _rasterise(sets, 1024)
  for index, subset in enumerate(sets):
    np.testing.assert_array_equal(
      masks[index], reference_mask(subset), err_msg=f'set {index}: {subset}'
    )
    np.testing.assert_allclose(
      areas[index], ConvexHull(subset).volume, rtol=1e-5
    )


def test_support_area_bound_and_degenerate_zero():
  # Inscribed polygon: area <= hull <= 1.125 area on sets with many hull
  # vertices (the bound of hulls._support_polygon, 4 rounds); 0 on degenerate.
  rng = np.random.default_rng(11)
  sets = []
  for size in (5, 40, 300):
    sets.append(rng.uniform(0, 500, (size, 2)))
    angle = np.sort(rng.uniform(0, 2 * np.pi, size))
    radius = rng.uniform(0.999, 1.0, size) * 200
    sets.append(
      np.stack([radius * np.cos(angle), 3 * radius * np.sin(angle)], -1) + 250
    )  # nearly convex
    sets.append(
      np.stack([rng.uniform(0, 500, size), rng.uniform(0, 0.5, size)], -1)
    )  # sliver
  degenerate = [
    np.array([[3.0, 4.0]] * 4),
    np.array([[3.0, 4.0], [9.0, 1.0]]),
    np.array([[0.0, 0.0], [2.0, 1.0], [6.0, 3.0], [40.0, 20.0]]),
  ]
  masks_points = sets + degenerate
  _, areas = _rasterise(masks_points, 2000)
  for index, subset in enumerate(sets):
    hull = ConvexHull(subset).volume
    assert areas[index] <= hull * (1 + 1e-4) + 1e-3, index
    assert hull <= 1.125 * areas[index] * (1 + 1e-4) + 1e-3, index
  np.testing.assert_array_equal(areas[len(sets) :], 0.0)


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
  fn = functools.partial(hulls.rasterise_hulls, grid_shape=GRID)
  args = (jnp.asarray(GRID), jnp.asarray(IMAGE_SIZE))
  masks, areas = jax.jit(jax.vmap(fn, in_axes=(0, 0, None, None)))(
    jnp.asarray(batch), jnp.asarray(members), *args
  )
  for image in range(2):
    one_masks, one_areas = jax.jit(fn)(
      jnp.asarray(batch[image]), jnp.asarray(members[image]), *args
    )
    np.testing.assert_array_equal(
      np.asarray(masks[image]), np.asarray(one_masks)
    )
    np.testing.assert_array_equal(
      np.asarray(areas[image]), np.asarray(one_areas)
    )
    for subset in range(3):
      np.testing.assert_array_equal(
        np.asarray(one_masks[subset]),
        reference_mask(batch[image][members[image, subset]]),
      )


def _loops(jaxpr):
  """(primitive, trip count) of every scan / while in a jaxpr, nested."""
  found = []
  for equation in jaxpr.eqns:
    if equation.primitive.name in ('scan', 'while'):
      found.append((equation.primitive.name, equation.params.get('length')))
    for value in equation.params.values():
      for inner in value if isinstance(value, (tuple, list)) else [value]:
        inner = getattr(inner, 'jaxpr', inner)
        if hasattr(inner, 'eqns'):  # cond branches, custom_vmap, pjit ...
          found += _loops(inner)
  return found


def test_rasterise_has_no_loop_growing_with_points():
  def trace(num_points):
    points = jnp.zeros((num_points, 2), jnp.float32)
    members = jnp.zeros((7, num_points), bool)
    return jax.make_jaxpr(
      lambda p, m: hulls.rasterise_hulls(
        p,
        m,
        jnp.asarray((48, 64)),
        jnp.asarray((768, 1024)),
        grid_shape=(48, 64),
      )
    )(points, members).jaxpr

  small, large = trace(64), trace(4096)
  assert _loops(small) == _loops(large)
  assert len(small.eqns) == len(large.eqns)
  assert all(
    name == 'scan' and length <= 32 for name, length in _loops(large)
  ), _loops(large)
