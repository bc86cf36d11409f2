"""Image file bytes -> RGB pixels, refusing unsafe or corrupt files (host).

  ImageError    a file that cannot be used; the message names it
  max_pixels    the decode's pixel limit (CV_IO_MAX_IMAGE_PIXELS)
  header_size   the size a PNG or JPEG header claims, read before decoding
  decode_bytes  bytes -> uint8 (H_I, W_I, 3) RGB (images.load_image reads the
                file and resizes)

A file from a user's folder may claim 50000x50000 px, be truncated, or hold
corrupt JPEG entropy data that libjpeg decodes to grey with a mere warning:
each is an ImageError naming the file, so that a run skips it and goes on.
"""

import os
import struct
import sys
import tempfile
import threading
from typing import Sequence

import cv2
import numpy as np

MAX_PIXELS = 2**30
"""Default pixel limit of a decode (OpenCV's own): files whose header claims
more are skipped before decoding. The environment variable
CV_IO_MAX_IMAGE_PIXELS raises both this limit and OpenCV's."""

LIBJPEG_WARNINGS = (
  'Corrupt JPEG data',
  'Premature end of JPEG file',
  'Invalid SOS parameters',
  'Inconsistent progression sequence',
)
"""Starts of the libjpeg warnings that mean the decoded pixels are garbage."""

_STDERR_LOCK = threading.Lock()


class ImageError(ValueError):
  """An image file that cannot be used; the message names the file."""


def max_pixels() -> int:
  """The pixel limit: CV_IO_MAX_IMAGE_PIXELS if set, else MAX_PIXELS."""
  return int(os.environ.get('CV_IO_MAX_IMAGE_PIXELS', MAX_PIXELS))


def header_size(data: bytes) -> tuple[int, int] | None:
  """(width, height) a PNG's IHDR or a JPEG's SOF claims; None otherwise."""
  if data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR':
    return struct.unpack('>II', data[16:24])
  if data[:2] != b'\xff\xd8':
    return None
  at = 2
  while at + 9 <= len(data) and data[at] == 0xFF:
    marker = data[at + 1]
    if marker == 0xFF:  # fill byte
      at += 1
    elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length
      at += 2
    elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      height, width = struct.unpack('>HH', data[at + 5 : at + 9])
      return width, height
    else:
      at += 2 + struct.unpack('>H', data[at + 2 : at + 4])[0]
  return None


def _decode_jpeg(buffer: np.ndarray, flags: int, path: str):
  """cv2.imdecode of a JPEG with libjpeg's warnings caught.

  libjpeg prints its warnings on file descriptor 2 and decodes the rest as
  grey or garbage, so fd 2 goes to a file during the decode (one decode at a
  time); LIBJPEG_WARNINGS raise, anything else is passed on to stderr.
  """
  with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
      image = cv2.imdecode(buffer, flags)
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    sink.seek(0)
    lines = sink.read().decode(errors='replace').splitlines()
  warnings = [w for w in lines if w.startswith(LIBJPEG_WARNINGS)]
  other = [line for line in lines if line not in warnings]
  if other:
    sys.stderr.write('\n'.join(other) + '\n')
  if warnings:
    raise ImageError(f'{path}: corrupt JPEG data ({warnings[0]})')
  return image


def decode_bytes(
  data: bytes, path: str, *, apply_exif: bool, background: Sequence[int]
) -> np.ndarray:
  """Decodes image bytes to uint8 (H_I, W_I, 3) RGB, refusing unsafe files.

  Args:
    data: the file's bytes (not empty).
    path: the file, named in errors.
    apply_exif: apply a JPEG's EXIF orientation.
    background: RGB a transparent pixel is composited over.

  Returns:
    uint8 (H_I, W_I, 3) RGB image.

  Raises:
    ImageError: over the pixel limit, truncated or corrupt JPEG data,
      undecodable, or of an unsupported pixel type or channel count.
  """
  size = header_size(data)
  limit = max_pixels()
  if size is not None and size[0] * size[1] > limit:
    raise ImageError(
      f'{path}: claims {size[0]}x{size[1]} px, over the limit {limit}; set '
      'the environment variable CV_IO_MAX_IMAGE_PIXELS to allow'
    )
  buffer = np.frombuffer(data, np.uint8)
  if data[:2] == b'\xff\xd8':
    # JPEG: 8-bit gray / colour only. IMREAD_COLOR applies the EXIF
    # orientation unless IMREAD_IGNORE_ORIENTATION is added. libjpeg returns
    # a grey-filled image for a truncated file with a mere warning, so
    # require an EOI marker after the last scan (0xFF is byte-stuffed inside
    # scans, so neither marker occurs there by chance).
    if data.rfind(b'\xff\xd9') < data.rfind(b'\xff\xda'):
      raise ImageError(f'{path}: truncated JPEG (no end-of-image marker)')
    flags = cv2.IMREAD_COLOR
    if not apply_exif:
      flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image = _decode_jpeg(buffer, flags, path)
  else:
    # Other formats: keep depth and alpha, convert explicitly below.
    try:
      image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # e.g. over OpenCV's pixel limit
      message = str(error).strip().splitlines()[-1]
      raise ImageError(
        f'{path}: OpenCV cannot decode it ({message})'
      ) from error
  if image is None or image.size == 0:
    raise ImageError(
      f'{path}: not a readable image (corrupt or unknown format)'
    )
  if image.dtype == np.uint16:
    image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
  elif image.dtype != np.uint8:
    raise ImageError(f'{path}: unsupported pixel type {image.dtype}')
  if image.ndim == 2:
    image = image[:, :, None]
  channels = image.shape[2]
  if channels == 1:
    return np.repeat(image, 3, axis=2)
  if channels == 4:
    # Composite transparent pixels over the mean pixel: they become zero
    # network input, like padding.
    alpha = image[:, :, 3:].astype(np.float32) / 255.0
    mean_bgr = np.asarray(background[::-1], np.float32)
    blended = image[:, :, :3] * alpha + mean_bgr * (1.0 - alpha)
    image = np.round(blended).astype(np.uint8)
  elif channels != 3:
    raise ImageError(f'{path}: unsupported number of channels {channels}')
  return np.ascontiguousarray(image[:, :, ::-1])
