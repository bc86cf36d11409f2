"""Candidate regions: power set of the clusters -> 2^L convex-hull masks (Sec. 2).

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

Public: subset_members, compute_region_masks (masks from clustered points),
propose and propose_batch (detection, selection, clustering and masks of one
image or a padded batch), draw_regions (debug outlines).
"""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.regions import clustering
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import hulls
from regagg_jax.regions import keypoints


def subset_members(labels, *, num_clusters=3):
  """bool (2^L - 1, P): which points belong to each non-empty subset.

  Args:
    labels: int32 (P,) cluster of each point, -1 for padding.
    num_clusters: L.
  """
  subsets = jnp.arange(1, 2**num_clusters)[:, None]  # (2^L - 1, 1)
  bits = jnp.right_shift(subsets, jnp.maximum(labels, 0)[None, :]) & 1
  return (labels[None, :] >= 0) & (bits == 1)


def _grid_size(valid_cells):
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
  grid_size = _grid_size(valid_cells)
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


@functools.partial(
  jax.jit,
  static_argnames=(
    'padded_shape',
    'n_max',
    'n_min',
    'num_clusters',
    'min_cells',
  ),
)
def _regions_from_points(
  points,
  valid,
  alpha,
  valid_cells,
  image_size,
  *,
  padded_shape,
  n_max,
  n_min,
  num_clusters,
  min_cells,
):
  """Selection, clustering and masks for one (maybe padded) image."""
  points, valid = keypoints.select_salient_padded(
    points,
    valid,
    alpha,
    _grid_size(valid_cells),
    image_size,
    padded_shape=padded_shape,
    n_max=n_max,
    n_min=n_min,
  )
  labels, _ = clustering.global_fast_kmeans(
    points, valid, num_clusters=num_clusters
  )
  return compute_region_masks(
    points,
    labels,
    valid_cells,
    image_size,
    num_clusters=num_clusters,
    min_cells=min_cells,
  )


@functools.partial(
  jax.jit,
  static_argnames=('n_max', 'n_min', 'num_clusters', 'min_cells', 'max_points'),
)
def _regions_from_image(
  image,
  alpha,
  valid_cells,
  image_size,
  *,
  n_max,
  n_min,
  num_clusters,
  min_cells,
  max_points,
):
  """Fused jax detection + selection, clustering and masks for one image."""
  points, valid = keypoints.detect_salient(
    image,
    alpha,
    _grid_size(valid_cells),
    image_size,
    padded_shape=image.shape[:2],
    n_max=n_max,
    n_min=n_min,
    max_points=max_points,
  )
  labels, _ = clustering.global_fast_kmeans(
    points, valid, num_clusters=num_clusters
  )
  return compute_region_masks(
    points,
    labels,
    valid_cells,
    image_size,
    num_clusters=num_clusters,
    min_cells=min_cells,
  )


def propose(
  image,
  alpha,
  *,
  backend='hesaff',
  n_max=4000,
  n_min=300,
  num_clusters=3,
  min_cells=1,
  max_points=8192,
):
  """Candidate regions of one image (Sec. 2).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    alpha: float32 (H, W) spatial weights of eq. 1 on its conv grid.
    backend: keypoint detector, "hesaff" or "jax" (see keypoints.detect).
    n_max, n_min: N_max and N_min of the salient point rule.
    num_clusters: L; M = 2^L regions.
    min_cells: cluster regions with fewer cells are discarded.
    max_points: "jax" backend: detector candidates kept by |DoH|.

  Returns:
    masks bool (M, H, W) and valid bool (M,); the last slot is the whole image.
  """
  if alpha.ndim != 2:
    raise ValueError(f'alpha must be (H, W), got shape {alpha.shape}')
  image_size = tuple(image.shape[:2])
  if backend == 'jax':
    hessian_affine.check_image(image)
    return _regions_from_image(
      jnp.asarray(image),
      jnp.asarray(alpha, jnp.float32),
      jnp.ones(alpha.shape, bool),
      jnp.asarray(image_size),
      n_max=n_max,
      n_min=n_min,
      num_clusters=num_clusters,
      min_cells=min_cells,
      max_points=max_points,
    )
  points, valid = keypoints.detect(image, backend=backend)
  return _regions_from_points(
    points,
    valid,
    jnp.asarray(alpha, jnp.float32),
    jnp.ones(alpha.shape, bool),
    jnp.asarray(image_size),
    padded_shape=image_size,
    n_max=n_max,
    n_min=n_min,
    num_clusters=num_clusters,
    min_cells=min_cells,
  )


def propose_batch(
  images,
  alpha,
  valid_cells,
  image_sizes,
  *,
  backend='hesaff',
  n_max=4000,
  n_min=300,
  num_clusters=3,
  min_cells=1,
  max_points=8192,
):
  """Candidate regions of a padded batch (images.pad_batch layout).

  With backend "hesaff" each image is detected on its own (unpadded) area on
  the host; with "jax" the padded batch runs in one vmapped jit (detection
  fused with the selection, `keypoints.detect_salient`; points whose
  measurement region leaves the image are dropped), and the whole call is
  traceable: it can run inside an outer jax.jit (the encoder's). Selection,
  clustering and masks run in the same vmapped jit; masks are ANDed with
  valid_cells.

  Args:
    images: uint8 (B, H_I, W_I, 3) padded RGB images.
    alpha: float32 (B, H, W) spatial weights (eq. 1).
    valid_cells: bool (B, H, W) cells that belong to each image.
    image_sizes: int (B, 2) (height, width) of each image before padding.
    backend, n_max, n_min, num_clusters, min_cells, max_points: as in
      `propose`.

  Returns:
    masks bool (B, M, H, W) and valid bool (B, M).
  """
  if images.ndim != 4 or alpha.ndim != 3 or valid_cells.shape != alpha.shape:
    raise ValueError(
      f'need images (B, H_I, W_I, 3), alpha and valid_cells '
      f'(B, H, W); got {images.shape}, {alpha.shape}, '
      f'{valid_cells.shape}'
    )
  if backend == 'jax':  # traceable: no host reads of the (maybe traced) inputs
    hessian_affine.check_image(images[0])
    regions = functools.partial(
      _regions_from_image,
      n_max=n_max,
      n_min=n_min,
      num_clusters=num_clusters,
      min_cells=min_cells,
      max_points=max_points,
    )
    return jax.vmap(regions)(
      jnp.asarray(images),
      jnp.asarray(alpha, jnp.float32),
      jnp.asarray(valid_cells),
      jnp.asarray(image_sizes, jnp.int32),
    )
  if backend != 'hesaff':
    raise ValueError(f'backend must be "hesaff" or "jax", got {backend!r}')
  image_sizes = np.asarray(image_sizes, np.int32)
  detections = [
    keypoints.detect(np.asarray(image[:height, :width]), backend=backend)
    for image, (height, width) in zip(images, image_sizes)
  ]
  size = max(len(points) for points, _ in detections)
  points = jnp.stack(
    [jnp.pad(p, ((0, size - len(p)), (0, 0))) for p, _ in detections]
  )
  valid = jnp.stack([jnp.pad(v, (0, size - len(v))) for _, v in detections])
  regions = functools.partial(
    _regions_from_points,
    padded_shape=tuple(images.shape[1:3]),
    n_max=n_max,
    n_min=n_min,
    num_clusters=num_clusters,
    min_cells=min_cells,
  )
  return jax.vmap(regions)(
    points,
    valid,
    jnp.asarray(alpha, jnp.float32),
    jnp.asarray(valid_cells),
    jnp.asarray(image_sizes),
  )


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
