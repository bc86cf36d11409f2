"""Host side of encoding: read, rotate, crop, shrink, bucket, pad, prefetch.

  load           one image as the encoder reads it (rotate, crop, shrink)
  reader         row -> image of a list, with its box and rotation
  read_batches   rows -> padded Batch of one shape bucket, decoded on
                 threads ahead of the device; unreadable images skipped
  make_batch     images of one bucket -> Batch padded to the batch size
  check_reading  argument checks shared by the encoder's entry points

Batches hold one shape bucket (images.bucket_shape) padded to a fixed
batch size with empty images, so each bucket compiles the encoder once.
"""

import collections
import concurrent.futures
import itertools
from typing import NamedTuple

from absl import logging
import numpy as np
import tqdm

from regagg_jax.features import images


def load(path, *, box=None, rotation=0, max_size=0, apply_exif=True):
  """Reads one image: rotate, crop at full resolution, then shrink.

  Args:
    path: image file.
    box: x1 y1 x2 y2 crop in pixels of the (rotated) image, or None.
    rotation: clockwise degrees, a multiple of 90.
    max_size: longer side to shrink to; 0 keeps the original size.
    apply_exif: apply a JPEG's EXIF orientation (images.load_image); box
      and rotation refer to the image after it.

  Returns:
    uint8 (H_I, W_I, 3) RGB image.

  Raises:
    images.ImageError: unreadable, or the box leaves the image, or the crop
      is empty or too small.
  """
  image = images.load_image(path, apply_exif=apply_exif)
  if rotation:
    image = images.rotate_image(image, rotation)
  if box is not None:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = np.round(np.asarray(box, np.float64))
    if x2 > width or y2 > height:
      raise images.ImageError(
        f'{path}: field "box" {list(box)} is outside the image of '
        f'{width}x{height} px'
      )
    try:
      image = images.crop_query(image, box)
    except ValueError as error:
      raise images.ImageError(f'{path}: {error}') from error
    if min(image.shape[:2]) < images.MIN_SIDE:
      raise images.ImageError(
        f'{path}: crop {list(box)} is smaller than {images.MIN_SIDE} px'
      )
  if max_size and max(image.shape[:2]) > max_size:
    logging.info(
      '%s: %dx%d px shrunk to a longer side of %d px (features.max_size)',
      path,
      image.shape[1],
      image.shape[0],
      max_size,
    )
    image = images.resize_longer_side(image, max_size)
  return image


class Batch(NamedTuple):
  """A padded batch of images of one shape bucket (images.pad_batch)."""

  rows: list  # rows of the input list, one per real image
  rgb: np.ndarray  # uint8 (B, H_b, W_b, 3), padded to the batch size
  sizes: np.ndarray  # int32 (B, 2) image (H_I, W_I), zeros for padding
  cells: np.ndarray  # bool (B, H, W) valid feature cells


def make_batch(rows, pictures, batch_size):
  """Pads images of one shape bucket into a batch of batch_size."""
  height, width = images.bucket_shape(*pictures[0].shape[:2])
  rgb, cells = images.pad_batch(pictures, height=height, width=width)
  extra = batch_size - len(pictures)
  rgb = np.concatenate([rgb, np.zeros((extra,) + rgb.shape[1:], np.uint8)])
  cells = np.concatenate([cells, np.zeros((extra,) + cells.shape[1:], bool)])
  sizes = np.zeros((batch_size, 2), np.int32)
  sizes[: len(pictures)] = [p.shape[:2] for p in pictures]
  return Batch(list(rows), rgb, sizes, cells)


def read_batches(
  read,
  rows,
  image_paths,
  skipped,
  *,
  batch_size,
  num_threads=4,
  prefetch=2,
  desc='encoding',
):
  """Yields Batch of one shape bucket each, skipping unreadable images.

  The progress bar is labelled `desc` (what the pass computes).

  read(row) runs on num_threads threads, at most (prefetch + 1) *
  batch_size images ahead of the batch being consumed; results are taken in
  row order, so batches do not depend on the thread count. A bucket is
  yielded when it is full, partial buckets at the end.
  """
  pool = concurrent.futures.ThreadPoolExecutor(num_threads)
  pending, futures, upcoming = {}, collections.deque(), iter(rows)

  def submit(count):
    for row in itertools.islice(upcoming, count):
      futures.append((row, pool.submit(read, row)))

  try:
    submit((prefetch + 1) * batch_size)
    with tqdm.tqdm(total=len(rows), desc=desc, unit='image') as bar:
      while futures:
        row, future = futures.popleft()
        submit(1)
        bar.update()
        try:
          image = future.result()
        except images.ImageError as error:
          logging.warning('skipping unreadable image: %s', error)
          skipped.append([str(image_paths[row]), str(error)])
          continue
        bucket = pending.setdefault(images.bucket_shape(*image.shape[:2]), [])
        bucket.append((row, image))
        if len(bucket) == batch_size:
          yield make_batch(*zip(*bucket), batch_size)
          bucket.clear()
    for bucket in pending.values():
      if bucket:
        yield make_batch(*zip(*bucket), batch_size)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def reader(image_paths, *, boxes, rotations, max_size, apply_exif):
  """row -> uint8 (H_I, W_I, 3) image as `load` reads image_paths[row]."""
  return lambda row: load(
    image_paths[row],
    box=None if boxes is None else boxes[row],
    rotation=0 if rotations is None else rotations[row],
    max_size=max_size,
    apply_exif=apply_exif,
  )


def check_reading(image_paths, rows, batch_size, num_threads, prefetch):
  """Refuses bad batch / thread counts and rows outside or repeated."""
  if batch_size < 1 or num_threads < 1 or prefetch < 0:
    raise ValueError(
      f'need batch_size >= 1, num_threads >= 1 and prefetch '
      f'>= 0, got {batch_size}, {num_threads}, {prefetch}'
    )
  for row in rows:
    if not 0 <= row < len(image_paths):
      raise ValueError(f'row {row} is outside the {len(image_paths)} images')
  if len(set(rows)) != len(rows):
    raise ValueError('rows must not repeat')
