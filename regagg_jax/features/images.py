"""Image loading, resizing and batching on the host (numpy, OpenCV).

Images are uint8 (H_I, W_I, 3) RGB everywhere in the package. Images of
different shapes are batched by padding them to a shape bucket with the Caffe
mean pixel (which `vgg19.preprocess` maps to ~0, the value the network's own
SAME zero padding uses) and carrying a boolean mask of the valid conv5_4 cells.
Decoding a file's bytes safely (pixel limits, corrupt JPEG data) is
`decoding`'s job; `load_image` reads the file, decodes, shrinks and checks.
"""

import math
import os
from typing import Sequence

import cv2
import numpy as np

from regagg_jax.features import decoding
from regagg_jax.features.decoding import ImageError

STRIDE = 16
"""Total stride of VGG19 conv5_4 (four 2x2/2 poolings with ceil rounding)."""

MIN_SIDE = 32
"""Default smallest accepted image side, in pixels.

With Caffe's ceil-rounded pooling any image of at least 1 px gives a non-empty
conv5_4 map (ceil(n/16) >= 1), so emptiness alone never rejects an image. A
1-cell map, however, is one 252 px receptive field made mostly of zero
padding, and its statistics (eq. 1-2) are degenerate; 32 px is the
smallest side that gives at least 2 conv5_4 cells along every axis.
"""

MEAN_RGB = (124, 117, 104)
"""The Caffe ImageNet mean pixel (123.68, 116.779, 103.939) rounded to uint8,
RGB order: padding with it gives a preprocessed input within 0.33 of zero."""

BUCKET_MULTIPLE = 64
"""Default granularity of shape buckets, in pixels (4 conv5_4 cells)."""


def load_image(
  path: str | os.PathLike,
  *,
  max_size: int | None = None,
  min_side: int = MIN_SIDE,
  apply_exif: bool = True,
) -> np.ndarray:
  """Reads an image file as RGB uint8.

  Handles grayscale, alpha (composited over the mean pixel), 16-bit (rounded
  to 8-bit) and, for JPEG, the EXIF orientation (unless apply_exif=False).

  Args:
    path: image file.
    max_size: if given, images whose longer side exceeds it are shrunk so that
      the longer side equals it (never enlarged).
    min_side: smallest accepted side after resizing, in pixels (see MIN_SIDE).
    apply_exif: rotate / flip a JPEG as its EXIF orientation tag says (what
      photo viewers show). False keeps the stored pixel orientation, which
      the Oxford / Paris query boxes and their official protocols (PIL,
      without EXIF transposition) refer to.

  Returns:
    uint8 (H_I, W_I, 3) RGB image.

  Raises:
    ImageError: missing, a dangling link, empty, corrupt / truncated (also
      libjpeg's corrupt-data warnings), over the pixel limit (max_pixels),
      unsupported or too small.
  """
  path = os.fspath(path)
  if os.path.islink(path) and not os.path.exists(path):
    raise ImageError(f'{path}: dangling symbolic link (to {os.readlink(path)})')
  if not os.path.isfile(path):
    raise ImageError(f'{path}: no such image file')
  with open(path, 'rb') as file:
    data = file.read()
  if not data:
    raise ImageError(f'{path}: empty file (0 bytes)')
  image = decoding.decode_bytes(
    data, path, apply_exif=apply_exif, background=MEAN_RGB
  )
  if max_size is not None and max(image.shape[:2]) > max_size:
    image = resize_longer_side(image, max_size)
  if min(image.shape[:2]) < min_side:
    raise ImageError(
      f'{path}: image of {image.shape[1]}x{image.shape[0]} px is smaller '
      f'than {min_side} px on a side (conv5_4 map would have fewer than '
      f'{math.ceil(min_side / STRIDE)} cells per side)'
    )
  return image


def resize_longer_side(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes so that the longer side is `size`, keeping the aspect ratio.

  Area interpolation when shrinking, bicubic when enlarging.

  Args:
    image: uint8 (H_I, W_I, 3).
    size: target longer side in pixels.

  Returns:
    uint8 (H_I', W_I', 3) with max(H_I', W_I') == size.
  """
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'image must be (H_I, W_I, 3), got {image.shape}')
  if size < 1:
    raise ValueError(f'size must be positive, got {size}')
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_height = max(1, round(height * scale))
  new_width = max(1, round(width * scale))
  interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
  return cv2.resize(image, (new_width, new_height), interpolation=interpolation)


def feature_shape(height: int, width: int) -> tuple[int, int]:
  """conv5_4 grid of an image: four ceil-rounded halvings.

  Args:
    height: image height H_I in pixels.
    width: image width W_I in pixels.

  Returns:
    (H, W) = (ceil(H_I/16), ceil(W_I/16)).
  """
  return -(-height // STRIDE), -(-width // STRIDE)


def bucket_shape(
  height: int, width: int, *, multiple: int = BUCKET_MULTIPLE
) -> tuple[int, int]:
  """The padded shape bucket an image goes into: sides rounded up.

  Args:
    height: image height H_I in pixels.
    width: image width W_I in pixels.
    multiple: bucket granularity in pixels; a multiple of 16 keeps the valid
      conv5_4 cells aligned with the unpadded image's.

  Returns:
    (height', width'), each the next multiple of `multiple`.
  """
  if multiple < 1 or multiple % STRIDE:
    raise ValueError(
      f'multiple must be a positive multiple of {STRIDE}, got {multiple}'
    )
  return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


def group_by_bucket(
  shapes: Sequence[tuple[int, int]],
  *,
  batch_size: int,
  multiple: int = BUCKET_MULTIPLE,
) -> list[tuple[tuple[int, int], list[int]]]:
  """Groups images into batches of one shape bucket each.

  Args:
    shapes: (H_I, W_I) of every image.
    batch_size: largest number of images in a batch.
    multiple: bucket granularity (see `bucket_shape`).

  Returns:
    A list of ((height', width'), indices into `shapes`), in order of first
    appearance; every image appears once.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  buckets: dict[tuple[int, int], list[int]] = {}
  for index, (height, width) in enumerate(shapes):
    buckets.setdefault(
      bucket_shape(height, width, multiple=multiple), []
    ).append(index)
  return [
    (shape, indices[start : start + batch_size])
    for shape, indices in buckets.items()
    for start in range(0, len(indices), batch_size)
  ]


def pad_batch(
  images: Sequence[np.ndarray], *, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
  """Pads images to one shape (bottom / right) with the mean pixel.

  Args:
    images: B uint8 (H_I, W_I, 3) RGB images, each at most (height, width).
    height: padded height in pixels.
    width: padded width in pixels.

  Returns:
    uint8 (B, height, width, 3) padded batch, and bool
    (B, ceil(height/16), ceil(width/16)) mask of each image's valid conv5_4
    cells (its top-left feature_shape(H_I, W_I) block).
  """
  grid_height, grid_width = feature_shape(height, width)
  batch = np.empty((len(images), height, width, 3), np.uint8)
  batch[...] = np.asarray(MEAN_RGB, np.uint8)
  valid = np.zeros((len(images), grid_height, grid_width), bool)
  for index, image in enumerate(images):
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(
        f'image {index} must be uint8 (H_I, W_I, 3), got '
        f'{image.dtype} {image.shape}'
      )
    image_height, image_width = image.shape[:2]
    if image_height > height or image_width > width:
      raise ValueError(
        f'image {index} of shape {image.shape[:2]} does not fit '
        f'in ({height}, {width})'
      )
    batch[index, :image_height, :image_width] = image
    valid_height, valid_width = feature_shape(image_height, image_width)
    valid[index, :valid_height, :valid_width] = True
  return batch, valid


def crop_query(image: np.ndarray, box) -> np.ndarray:
  """Cuts a query box out of a full-resolution image.

  The box is rounded half-to-even as the Revisited Oxford/Paris Python code
  does (PIL's crop) and clipped to the image.

  Args:
    image: uint8 (H_I, W_I, 3) the query image at its original size.
    box: (4,) x1 y1 x2 y2 in pixels (x2, y2 exclusive after rounding).

  Returns:
    uint8 (y2 - y1, x2 - x1, 3) crop.
  """
  box = np.asarray(box, np.float64)
  if box.shape != (4,):
    raise ValueError(f'box must be (x1, y1, x2, y2), got shape {box.shape}')
  height, width = image.shape[:2]
  x1, y1, x2, y2 = np.round(box).astype(np.int64)
  x1, x2 = np.clip([x1, x2], 0, width)
  y1, y2 = np.clip([y1, y2], 0, height)
  if x2 <= x1 or y2 <= y1:
    raise ValueError(
      f'box {box.tolist()} is empty inside an image of {width}x{height}'
    )
  return image[y1:y2, x1:x2]


def rotate_image(image: np.ndarray, degrees: int) -> np.ndarray:
  """Rotates uint8 (H_I, W_I, 3) clockwise by a multiple of 90 degrees."""
  if degrees % 90:
    raise ValueError(f'degrees must be a multiple of 90, got {degrees}')
  return np.ascontiguousarray(np.rot90(image, k=-(degrees // 90) % 4))
