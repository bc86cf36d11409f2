"""Convex hulls of point subsets rasterised on the conv grid (Sec. 2).

The geometry behind the candidate regions R'_m of regions.py: for S subsets
of P padded points (bool members (S, P)), `rasterise_hulls` returns the cells
of the conv grid inside each subset's convex hull and the hull's area.

A conv-grid cell (i, j) of an image whose own grid is H x W belongs to a hull
when its centre in image coordinates, ((j + 0.5) W_I / W, (i + 0.5) H_I / H),
is inside or on the convex hull of the subset's points (within `tolerance`
pixels). No hull is built point by point (a monotone chain is P dependent
steps, each a kernel launch on an accelerator): the hull's lowest and highest
points on each grid column's vertical line are two small LPs, solved for all
subsets and columns at once by a fixed number of bisections on the supporting
line's angle, each a dense (S, W, P) min (`_boundary_heights`), and read
exactly on the bridge edge found; the cell test then compares the cell centres
with them. The bisection runs over the packed points that may be hull vertices
(those not inside an inscribed polygon, `_compact_candidates`: typically a few
dozen of N_max = 4000), or over every point when they do not fit (one branch
for a whole vmapped batch, `_hull_heights`). The hull area (for regions'
`min_area` only) is that of a polygon of extreme points, refined by a fixed
number of quickhull rounds, within a factor 1.125 of the hull's and equal to
it once every vertex is found (`_support_polygon`). Nothing loops over P: the
sequential depth is the same for any number of points.

Public: rasterise_hulls.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _boundary_heights(x, y, members, x0, *, steps=24):
  """Lowest y of each subset's hull on the vertical lines x = x0 (Sec. 2).

  The hull's lowest point on the line x = x0 (inside the subset's x range)
  is the LP max_s g(s), g(s) = min_i (y_i + s (x0 - x_i)) over the members:
  g is concave, the minimum over the points left of x0 rises with s and the one
  over the points right of x0 falls, so `steps` bisections on the angle
  theta = atan(s) bracket the bridge slope for all (subset, column) pairs at
  once. The height is then read on the chord between the left argmin at the
  upper end of the bracket and the right argmin at the lower end: the bridge
  edge itself once the bracket holds only its slope, otherwise a chord at
  most (tan theta_hi - tan theta_lo) |x - x0| above it (24 steps: < 2e-4 px
  for |slope| <= 1 and points within 1000 px).

  Args:
    x: float32 (P,) point abscissae.
    y: float32 (..., P) point ordinates (a leading axis runs several sets of
      ordinates, e.g. y and -y, at once).
    members: bool (S, P) which points belong to each subset.
    x0: float32 (S, W) abscissae, each within its subset's [min x, max x].
    steps: bisection steps (a static count, independent of P).

  Returns:
    float32 (..., S, W) heights; garbage for empty subsets.
  """
  offset = x0[..., None] - x  # (S, W, P)
  left = members[:, None, :] & (offset >= 0)
  right = members[:, None, :] & (offset <= 0)

  def heights(theta):  # (..., S, W) -> (..., S, W, P)
    return y[..., None, None, :] + jnp.tan(theta)[..., None] * offset

  def bisect(_, bracket):
    low, high = bracket
    middle = 0.5 * (low + high)
    height = heights(middle)
    rising = jnp.min(jnp.where(left, height, jnp.inf), axis=-1) < jnp.min(
      jnp.where(right, height, jnp.inf), axis=-1
    )
    return jnp.where(rising, middle, low), jnp.where(rising, high, middle)

  limit = np.nextafter(np.float32(np.pi / 2), np.float32(0))  # tan > 0
  shape = y.shape[:-1] + x0.shape
  low, high = jax.lax.fori_loop(
    0, steps, bisect, (jnp.full(shape, -limit), jnp.full(shape, limit))
  )
  start = jnp.argmin(jnp.where(left, heights(high), jnp.inf), axis=-1)
  end = jnp.argmin(jnp.where(right, heights(low), jnp.inf), axis=-1)

  def ordinate(index):  # (..., S, W) point indices -> their y
    flat = index.reshape(y.shape[:-1] + (-1,))
    return jnp.take_along_axis(y, flat, axis=-1).reshape(shape)

  start_x, end_x = x[start], x[end]
  start_y, end_y = ordinate(start), ordinate(end)
  span = end_x - start_x
  fraction = (x0 - start_x) / jnp.where(span > 0, span, 1.0)
  return jnp.where(span > 0, start_y + fraction * (end_y - start_y), start_y)


def _support_polygon(points, members, *, directions=4, rounds=4, margin=1e-3):
  """float32 (S, V, 2) a polygon inscribed in each subset's hull, V = D 2^R.

  Its vertices (counter-clockwise, repeats allowed) are the members extreme in
  `directions` equally spaced directions, then, `rounds` times, in the outward
  normal of every polygon edge: the extreme member is inserted after the
  edge's start when it lies more than `margin` pixels beyond the edge (a
  quickhull step; it then lies between the edge's two support lines, which
  keeps the order), else the start is repeated. The hull beyond an edge lies
  in the triangle of the edge and its two support lines, cut at the inserted
  point's distance: at most twice the triangle that the step adds. So each
  round at least halves the area left out, and area <= hull area <=
  (1 + 2^(1 - rounds)) area (points within `margin` of an edge aside); the
  polygon is the hull once every hull vertex is found, and its area is 0 for
  0, 1 or 2 points and for collinear points (exactly so for integer
  coordinates).

  Args:
    points: float32 (P, 2) (x, y) pixels.
    members: bool (S, P) which points belong to each subset.
    directions: initial support directions (>= 3).
    rounds: refinement rounds (static; each doubles the polygon's vertices).
    margin: pixels beyond an edge below which a point counts as on it (above
      float32 rounding of coordinates up to a few thousand pixels).
  """
  angles = 2 * np.pi * np.arange(directions) / directions
  normals = jnp.broadcast_to(
    jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], -1), jnp.float32),
    (members.shape[0], directions, 2),
  )

  def support(normals):  # (S, K, 2) -> (S, K, 2) extreme members
    score = jnp.einsum('skc,pc->skp', normals, points)
    return points[
      jnp.argmax(jnp.where(members[:, None], score, -jnp.inf), axis=-1)
    ]

  vertices = support(normals)
  for _ in range(rounds):
    edge = jnp.roll(vertices, -1, axis=1) - vertices
    length = jnp.linalg.norm(edge, axis=-1, keepdims=True)
    # A repeated vertex is extreme between its two normals: any will do.
    outward = jnp.where(
      length > 0,
      jnp.stack([edge[..., 1], -edge[..., 0]], -1) / jnp.maximum(length, 1e-30),
      normals,
    )
    found = support(outward)
    beyond = jnp.sum(outward * (found - vertices), axis=-1) > margin
    inserted = jnp.where(beyond[..., None], found, vertices)
    shape = (members.shape[0], -1, 2)
    vertices = jnp.stack([vertices, inserted], 2).reshape(shape)
    normals = jnp.stack([normals, outward], 2).reshape(shape)
  return vertices


def _polygon_area(vertices):
  """float32 (S,) area of (S, V, 2) polygons (shoelace about the first)."""
  relative = vertices - vertices[:, :1]
  following = jnp.roll(relative, -1, axis=1)
  return 0.5 * jnp.abs(
    jnp.sum(
      relative[..., 0] * following[..., 1]
      - relative[..., 1] * following[..., 0],
      axis=1,
    )
  )


def _compact_candidates(
  points, members, polygons, *, margin=1e-3, max_candidates=256
):
  """The points that may be a vertex of some subset's hull, moved first.

  A member more than `margin` pixels inside its subset's inscribed polygon
  (every edge, `_support_polygon`) is inside the hull of the polygon's
  vertices, which are members: dropping it changes no hull. A point so
  dropped from every subset that holds it is no candidate; the others
  (typically the polygons' vertices, a few dozen) are packed into
  max_candidates slots.

  Args:
    points: float32 (P, 2) (x, y) pixels.
    members: bool (S, P) which points belong to each subset.
    polygons: float32 (S, V, 2) counter-clockwise inscribed polygons.
    margin: pixels inside every edge for a point to be dropped.
    max_candidates: Q, slots of the packed candidates (static).

  Returns:
    points float32 (min(P, Q), 2) and members bool (S, min(P, Q)) of the
    candidates, and whether they all fit (bool scalar): if so, every subset's
    hull is that of its packed members.
  """
  edges = jnp.roll(polygons, -1, axis=1) - polygons  # (S, V, 2)
  lengths = jnp.linalg.norm(edges, axis=-1)[..., None]  # (S, V, 1)
  offsets = points - polygons[:, :, None, :]  # (S, V, P, 2)
  left = edges[..., :1] * offsets[..., 1] - edges[..., 1:] * offsets[..., 0]
  inside = jnp.all((lengths == 0) | (left > margin * lengths), axis=1)
  inside &= jnp.any(lengths > 0, axis=1)  # a lone vertex has no inside
  candidate = jnp.any(members & ~inside, axis=0)  # (P,)
  _, index = jax.lax.top_k(
    candidate.astype(jnp.int32), min(points.shape[0], max_candidates)
  )
  fits = jnp.sum(candidate) <= index.shape[0]
  return points[index], members[:, index] & candidate[index], fits


def _pick_heights(points, members, x0, packed_points, packed_members, fits):
  """float32 (2, S, W) hull bottom and -top at x0: from the packed candidates
  when they all fit, else from every point (a real branch, not a select)."""

  def heights(points, members):
    return _boundary_heights(
      points[:, 0], jnp.stack([points[:, 1], -points[:, 1]]), members, x0
    )

  return jax.lax.cond(
    fits,
    lambda: heights(packed_points, packed_members),
    lambda: heights(points, members),
  )


@jax.custom_batching.custom_vmap
def _hull_heights(points, members, x0, packed_points, packed_members, fits):
  """`_pick_heights`; vmapped (a batch of images), one branch for the batch."""
  return _pick_heights(points, members, x0, packed_points, packed_members, fits)


@_hull_heights.def_vmap
def _hull_heights_batched(axis_size, in_batched, *arrays):
  arrays = [
    array if batched else jnp.broadcast_to(array, (axis_size,) + array.shape)
    for array, batched in zip(arrays, in_batched)
  ]
  all_fit = jnp.all(arrays[-1])  # unbatched: a real branch under vmap

  def pick(*arrays):
    return _pick_heights(*arrays, all_fit)

  return jax.vmap(pick)(*arrays[:-1]), True


def rasterise_hulls(
  points, members, grid_size, image_size, *, grid_shape, tolerance=1e-3
):
  """Convex hulls of point subsets rasterised on the conv grid.

  Loop-free in P: dense (S, V, P) support and candidate passes, then a static
  number of bisection steps (`_boundary_heights`) over the packed candidate
  points (every point if they do not fit; one branch for a vmapped batch).

  Args:
    points: float32 (P, 2) (x, y) pixels.
    members: bool (S, P) which points belong to each subset.
    grid_size: int (2,) (H, W) of the image's own grid (<= grid_shape).
    image_size: int (2,) (H_I, W_I).
    grid_shape: static (H, W) of the output (padded grid).
    tolerance: pixels by which a cell centre may lie outside a hull and still
      count as on it (float rounding).

  Returns:
    masks bool (S, H, W), False outside the own grid, and areas float32 (S,)
    in pixels^2 of a polygon inscribed in each hull, within a factor 1.125
    of the hull area and equal to it when all its vertices are found (see
    `_support_polygon`).
  """
  points = jnp.asarray(points, jnp.float32)
  grid = jnp.asarray(grid_size, jnp.float32)
  cell = jnp.asarray(image_size, jnp.float32) / grid
  rows = jnp.arange(grid_shape[0], dtype=jnp.float32)
  columns = jnp.arange(grid_shape[1], dtype=jnp.float32)
  centres_x = (columns + 0.5) * cell[1]
  centres_y = (rows + 0.5) * cell[0]
  x = points[:, 0]
  min_x = jnp.min(jnp.where(members, x, jnp.inf), axis=1)[:, None]
  max_x = jnp.max(jnp.where(members, x, -jnp.inf), axis=1)[:, None]
  x0 = jnp.clip(centres_x, jnp.minimum(min_x, max_x), max_x)  # (S, W)
  polygons = _support_polygon(points, members)
  bottom, top = _hull_heights(
    points, members, x0, *_compact_candidates(points, members, polygons)
  )
  top = -top
  in_columns = (centres_x >= min_x - tolerance) & (
    centres_x <= max_x + tolerance
  )  # (S, W)
  masks = (
    in_columns[:, None, :]
    & (centres_y[:, None] >= bottom[:, None, :] - tolerance)
    & (centres_y[:, None] <= top[:, None, :] + tolerance)
  )
  masks &= jnp.any(members, axis=1)[:, None, None]
  inside = (rows[:, None] < grid[0]) & (columns[None, :] < grid[1])
  return masks & inside[None], _polygon_area(polygons)
