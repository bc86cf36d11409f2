"""Candidate regions of Sec. 2, and the one place that picks the detector.

An image's salient points (Hessian-affine [16], N_max / N_min rule of
`keypoints`) are clustered into L clusters (`clustering`), and the power set
of the clusters gives M = 2^L hull masks on the conv grid (`region_masks`:
slot order, discarding rules; the last slot is the whole image).

The detector backend is chosen here and nowhere else (`RegionOptions.backend`):
  "hesaff"  `keypoints.detect_hesaff`, pyhesaff on the host; `propose_batch`
            then loops over the images on the host, outside any jit.
  "jax"     `hessian_affine.detect_hessian_affine`, fused with the selection
            (`keypoints.detect_salient`); `propose_batch` is traceable and runs
            inside the encoder's jit (`is_traceable`).

Public: RegionOptions, is_traceable, detect_shapes and detect (keypoints of
either backend), propose and propose_batch (detection, selection, clustering
and masks of one image or a padded batch).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.regions import clustering
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import keypoints
from regagg_jax.regions import region_masks

BACKENDS = ('hesaff', 'jax')
"""The keypoint detectors: pyhesaff on the host, or the JAX detector."""


class RegionOptions(NamedTuple):
  """Static options of the region proposal (Sec. 2); hashable, so the jits
  take them as a static argument. Defaults are configs/default.py's.

  Attributes:
    backend: keypoint detector, one of BACKENDS ('hesaff': pyhesaff on the
      host; 'jax': traceable, see `is_traceable`).
    n_max: N_max, the salient points kept (those of largest alpha).
    n_min: N_min, the fallback point count when fewer are detected.
    num_clusters: L, the k-means clusters; M = 2^L regions.
    min_cells: cluster regions with fewer conv cells are discarded.
    max_points: 'jax' backend: detector candidates kept by |DoH|.
  """

  backend: str = 'hesaff'
  n_max: int = 4000
  n_min: int = 300
  num_clusters: int = 3
  min_cells: int = 1
  max_points: int = 8192


def _check_backend(backend):
  if backend not in BACKENDS:
    raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')


def _check_options(options):
  if not isinstance(options, RegionOptions):
    raise TypeError(
      f'options must be a proposal.RegionOptions, got {type(options).__name__}'
    )
  _check_backend(options.backend)


def is_traceable(options):
  """Whether `propose_batch` with these options can run inside a jax.jit.

  Args:
    options: RegionOptions.

  Returns:
    True for the 'jax' backend; False for 'hesaff' (host detection).

  Raises:
    TypeError, ValueError: not a RegionOptions, or an unknown backend.
  """
  _check_options(options)
  return options.backend == 'jax'


def detect_shapes(image, *, backend='hesaff', **detector_options):
  """Hessian-affine keypoints with their affine shapes ([16], Sec. 2).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    backend: one of BACKENDS: 'hesaff' (`keypoints.detect_hesaff`, host) or
      'jax' (`hessian_affine.detect_hessian_affine`).
    **detector_options: passed to the backend (pad_multiple and hesaff
      parameters, e.g. threshold=..., or keyword arguments of
      `hessian_affine.detect_hessian_affine`).

  Returns:
    points: float32 (P, 2) keypoint centres (x, y) in pixels.
    shapes: float32 (P, 2, 2) matrices mapping the unit circle onto each
      measurement ellipse.
    valid: bool (P,) which rows are detections (the rest is padding).

  Raises:
    ValueError, TypeError: an unknown backend or a bad image.
  """
  _check_backend(backend)
  if backend == 'jax':
    hessian_affine.check_image(image)
    return hessian_affine.detect_hessian_affine(
      jnp.asarray(image), **detector_options
    )
  return keypoints.detect_hesaff(image, **detector_options)


def detect(image, *, backend='hesaff', **detector_options):
  """Hessian-affine salient point positions in an image (Sec. 2, [16]).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    backend, **detector_options: see `detect_shapes`.

  Returns:
    points float32 (P, 2) as (x, y) pixels and valid bool (P,).
  """
  points, _, valid = detect_shapes(image, backend=backend, **detector_options)
  return points, valid


@functools.partial(jax.jit, static_argnames=('padded_shape', 'options'))
def _regions_from_points(
  points, valid, alpha, valid_cells, image_size, *, padded_shape, options
):
  """Selection, clustering and masks for one (maybe padded) image."""
  points, valid = keypoints.select_salient_padded(
    points,
    valid,
    alpha,
    region_masks.compute_grid_size(valid_cells),
    image_size,
    padded_shape=padded_shape,
    n_max=options.n_max,
    n_min=options.n_min,
  )
  return _cluster_regions(points, valid, valid_cells, image_size, options)


@functools.partial(jax.jit, static_argnames=('options',))
def _regions_from_image(image, alpha, valid_cells, image_size, *, options):
  """Fused jax detection + selection, clustering and masks for one image."""
  points, valid = keypoints.detect_salient(
    image,
    alpha,
    region_masks.compute_grid_size(valid_cells),
    image_size,
    padded_shape=image.shape[:2],
    n_max=options.n_max,
    n_min=options.n_min,
    max_points=options.max_points,
  )
  return _cluster_regions(points, valid, valid_cells, image_size, options)


def _cluster_regions(points, valid, valid_cells, image_size, options):
  """Global fast k-means of the salient points, then the 2^L masks."""
  labels, _ = clustering.global_fast_kmeans(
    points, valid, num_clusters=options.num_clusters
  )
  return region_masks.compute_region_masks(
    points,
    labels,
    valid_cells,
    image_size,
    num_clusters=options.num_clusters,
    min_cells=options.min_cells,
  )


def propose(image, alpha, *, options=RegionOptions()):
  """Candidate regions of one image (Sec. 2).

  Args:
    image: uint8 (H_I, W_I, 3) RGB image.
    alpha: float32 (H, W) spatial weights of eq. 1 on its conv grid.
    options: RegionOptions (detector backend, N_max, N_min, L, ...).

  Returns:
    masks bool (M, H, W) and valid bool (M,); the last slot is the whole image.

  Raises:
    ValueError, TypeError: alpha not (H, W), bad options or a bad image.
  """
  if alpha.ndim != 2:
    raise ValueError(f'alpha must be (H, W), got shape {alpha.shape}')
  image_size = tuple(image.shape[:2])
  alpha = jnp.asarray(alpha, jnp.float32)
  cells = jnp.ones(alpha.shape, bool)
  if is_traceable(options):
    hessian_affine.check_image(image)
    return _regions_from_image(
      jnp.asarray(image), alpha, cells, jnp.asarray(image_size), options=options
    )
  points, _, valid = keypoints.detect_hesaff(image)
  return _regions_from_points(
    points,
    valid,
    alpha,
    cells,
    jnp.asarray(image_size),
    padded_shape=image_size,
    options=options,
  )


def propose_batch(
  images, alpha, valid_cells, image_sizes, *, options=RegionOptions()
):
  """Candidate regions of a padded batch (images.pad_batch layout).

  With a traceable backend ("jax", `is_traceable`) the padded batch runs in
  one vmapped jit (detection fused with the selection,
  `keypoints.detect_salient`; points whose measurement region leaves the
  image are dropped) and the call can run inside an outer jax.jit (the
  encoder's). With "hesaff" each image is detected on its own (unpadded)
  area on the host, then selected, clustered and masked on the batch's
  padded grid, so that jit compiles once per bucket and point count, not
  per image size (each XLA CPU executable holds hundreds of memory maps,
  issue 16); padding images (size 0) get no valid region. Masks are ANDed
  with valid_cells.

  Args:
    images: uint8 (B, H_I, W_I, 3) padded RGB images.
    alpha: float32 (B, H, W) spatial weights (eq. 1).
    valid_cells: bool (B, H, W) cells that belong to each image (its
      top-left block).
    image_sizes: int (B, 2) (height, width) of each image before padding, 0
      for padding images.
    options: RegionOptions.

  Returns:
    masks bool (B, M, H, W) and valid bool (B, M): jax arrays for "jax",
    numpy for "hesaff".

  Raises:
    ValueError, TypeError: bad shapes or options.
  """
  if images.ndim != 4 or alpha.ndim != 3 or valid_cells.shape != alpha.shape:
    raise ValueError(
      f'need images (B, H_I, W_I, 3), alpha and valid_cells '
      f'(B, H, W); got {images.shape}, {alpha.shape}, '
      f'{valid_cells.shape}'
    )
  if is_traceable(options):  # no host reads of the (maybe traced) inputs
    hessian_affine.check_image(images[0])
    return jax.vmap(functools.partial(_regions_from_image, options=options))(
      jnp.asarray(images),
      jnp.asarray(alpha, jnp.float32),
      jnp.asarray(valid_cells),
      jnp.asarray(image_sizes, jnp.int32),
    )
  images, image_sizes = np.asarray(images), np.asarray(image_sizes)
  alpha = jnp.asarray(alpha, jnp.float32)
  count = 2**options.num_clusters
  masks = np.zeros((len(images), count) + valid_cells.shape[1:], bool)
  valid = np.zeros((len(images), count), bool)
  for slot, (height_i, width_i) in enumerate(image_sizes):
    if height_i:  # detected on the image, selected on the padded grid:
      points, _, found = keypoints.detect_hesaff(  # one compile per bucket
        images[slot, :height_i, :width_i]
      )
      masks[slot], valid[slot] = _regions_from_points(
        points,
        found,
        alpha[slot],
        jnp.asarray(valid_cells[slot]),
        jnp.asarray((height_i, width_i), jnp.int32),
        padded_shape=images.shape[1:3],
        options=options,
      )
  return masks, valid
