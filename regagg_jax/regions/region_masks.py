"""Region masks: the power set of the clusters as 2^L hull masks (Sec. 2).

Slot order (M = 2^L, fixed): slot m - 1 for m = 1 .. 2^L - 1 holds the subset
{C_l : bit l of m is set}, i.e. for L = 3: {C1}, {C2}, {C1,C2}, {C3}, {C1,C3},
{C2,C3}, {C1,C2,C3}; the last slot M - 1 is the whole image (the set of all
positions in I, R_M in the paper).

A conv-grid cell (i, j) of an image whose own grid is H x W belongs to R'_m
when its centre in image coordinates, ((j + 0.5) W_I / W, (i + 0.5) H_I / H),
is inside or on the convex hull of the subset's points (within `tolerance`
pixels); the hulls are rasterised, loop-free in the number of points, by
`hulls.rasterise_hulls`.

A region is discarded (valid False, mask zeroed, slot kept) when it has fewer
than `min_cells` cells or its hull area is below `min_area` cells^2: this is
the paper's "size (close to) zero", and it covers the degenerate sets of 0, 1
or 2 points and collinear points (area 0) explicitly.

  subset_members        which points belong to each non-empty subset
  compute_grid_size     rows and columns of an image's own conv grid
  compute_region_masks  clustered points -> the M masks and their validity
  draw_regions          the valid regions' outlines on the image (debugging)
"""

import cv2
import jax.numpy as jnp
import numpy as np

from regagg_jax.regions import hulls


def subset_members(labels, *, num_clusters=3):
  """bool (2^L - 1, P): which points belong to each non-empty subset.

  Args:
    labels: int32 (P,) cluster of each point, -1 for padding.
    num_clusters: L.
  """
  subsets = jnp.arange(1, 2**num_clusters)[:, None]  # (2^L - 1, 1)
  bits = jnp.right_shift(subsets, jnp.maximum(labels, 0)[None, :]) & 1
  return (labels[None, :] >= 0) & (bits == 1)


def compute_grid_size(valid_cells):
  """int32 (2,) rows and columns of the top-left block of valid cells."""
  return jnp.stack(
    [
      jnp.sum(jnp.any(valid_cells, axis=1)),
      jnp.sum(jnp.any(valid_cells, axis=0)),
    ]
  )


def compute_region_masks(
  points,
  labels,
  valid_cells,
  image_size,
  *,
  num_clusters=3,
  min_cells=1,
  min_area=1e-3,
  tolerance=1e-3,
):
  """The M = 2^L candidate regions R'_m of Sec. 2 on the conv grid.

  Args:
    points: float32 (P, 2) salient points P as (x, y) pixels.
    labels: int32 (P,) cluster of each point, -1 for padding.
    valid_cells: bool (H, W) cells that belong to the image (a padded image
      uses the top-left block).
    image_size: int (2,) (H_I, W_I) of the image.
    num_clusters: L.
    min_cells: regions with fewer cells are discarded.
    min_area: regions whose hull area (in cells^2; within a factor 1.125
      below, see `hulls.rasterise_hulls`) is smaller are discarded.
    tolerance: see `hulls.rasterise_hulls`.

  Returns:
    masks bool (M, H, W) (zero where discarded) and valid bool (M,); the last
    slot is the whole image.
  """
  grid_size = compute_grid_size(valid_cells)
  members = subset_members(labels, num_clusters=num_clusters)
  masks, areas = hulls.rasterise_hulls(
    points,
    members,
    grid_size,
    image_size,
    grid_shape=valid_cells.shape,
    tolerance=tolerance,
  )
  masks &= valid_cells[None]
  cell_area = jnp.prod(
    jnp.asarray(image_size, jnp.float32) / grid_size.astype(jnp.float32)
  )
  valid = (jnp.sum(masks, axis=(1, 2)) >= min_cells) & (
    areas / cell_area >= min_area
  )
  masks &= valid[:, None, None]
  masks = jnp.concatenate([masks, valid_cells[None]], axis=0)
  valid = jnp.concatenate([valid, jnp.any(valid_cells)[None]])
  return masks, valid


def draw_regions(image, masks, valid, *, points=None, thickness=2):
  """The outlines of the valid regions drawn on the image (for debugging).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    masks: bool (M, H, W) region masks on the conv grid.
    valid: bool (M,) which regions to draw.
    points: optional float32 (P, 2) (x, y) salient points to dot in white.
    thickness: outline width in pixels.

  Returns:
    uint8 (H_I, W_I, 3) RGB image with one coloured outline per region.
  """
  canvas = np.ascontiguousarray(np.asarray(image, np.uint8).copy())
  height, width = canvas.shape[:2]
  masks, valid = np.asarray(masks), np.asarray(valid)
  hues = np.linspace(0, 180, len(masks), endpoint=False).astype(np.uint8)
  colours = cv2.cvtColor(
    np.stack([hues, np.full_like(hues, 255), np.full_like(hues, 255)], 1)[None],
    cv2.COLOR_HSV2RGB,
  )[0]
  for slot in np.flatnonzero(valid):
    upsampled = cv2.resize(
      masks[slot].astype(np.uint8),
      (width, height),
      interpolation=cv2.INTER_NEAREST,
    )
    contours, _ = cv2.findContours(
      upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    # Shared borders would hide each other: inset each slot a little.
    inset = (slot % 4) * thickness
    contours = [
      (c + np.sign(c.mean(axis=0) - c) * inset).astype(np.int32)
      for c in contours
    ]
    cv2.drawContours(
      canvas, contours, -1, tuple(int(v) for v in colours[slot]), thickness
    )
  if points is not None:
    for x, y in np.asarray(points):
      cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (255, 255, 255), -1)
  return canvas
