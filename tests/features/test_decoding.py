"""Tests for regagg_jax.features.decoding: pixel limits, corrupt JPEG data."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.features import decoding
from regagg_jax.features import images


def _png_claiming(width, height):
  """A 69-byte PNG whose IHDR claims width x height (CRCs correct)."""
  chunk = lambda kind, body: (
    struct.pack('>I', len(body))
    + kind
    + body
    + struct.pack('>I', zlib.crc32(kind + body))
  )
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(b'\x00' * 4))
    + chunk(b'IEND', b'')
  )


def test_png_claiming_50000x50000_is_skipped_naming_the_limit(tmp_path):
  path = tmp_path / 'bomb.png'
  path.write_bytes(_png_claiming(50000, 50000))
  assert decoding.header_size(path.read_bytes()) == (50000, 50000)
  with pytest.raises(images.ImageError) as error:
    images.load_image(path)
  message = str(error.value)
  assert str(path) in message and 'claims 50000x50000 px' in message
  assert str(decoding.MAX_PIXELS) in message
  assert 'CV_IO_MAX_IMAGE_PIXELS' in message


def test_pixel_limit_follows_the_environment(tmp_path, monkeypatch):
  path = tmp_path / 'small.png'
  cv2.imwrite(str(path), np.zeros((40, 50, 3), np.uint8))
  assert images.load_image(path).shape == (40, 50, 3)
  monkeypatch.setenv('CV_IO_MAX_IMAGE_PIXELS', '1999')
  with pytest.raises(images.ImageError, match='over the limit 1999'):
    images.load_image(path)


def _sample_jpeg():
  image = images.load_image(sorted(datasets.SAMPLES_ROOT.glob('*.jpg'))[0])
  return cv2.imencode('.jpg', image[:, :, ::-1])[1].tobytes()


def test_jpeg_header_size_is_read_from_sof():
  data = _sample_jpeg()
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  assert decoding.header_size(data) == (image.shape[1], image.shape[0])


def test_truncated_jpeg_with_end_marker_appended_is_skipped(tmp_path):
  data = _sample_jpeg()
  path = tmp_path / 'cut.jpg'
  path.write_bytes(data[: len(data) // 2] + b'\xff\xd9')
  with pytest.raises(images.ImageError) as error:
    images.load_image(path)
  assert str(path) in str(error.value)
  assert 'corrupt JPEG data' in str(error.value)


def test_jpeg_with_corrupt_entropy_data_is_skipped(tmp_path):
  data = bytearray(_sample_jpeg())
  start = data.find(b'\xff\xda') + 200
  rng = np.random.default_rng(0)
  for at in rng.integers(start, len(data) - 100, 20):
    data[at] = rng.integers(0, 255)
  path = tmp_path / 'noise.jpg'
  path.write_bytes(bytes(data))
  with pytest.raises(images.ImageError, match='corrupt JPEG data') as error:
    images.load_image(path)
  assert str(path) in str(error.value)
  good = tmp_path / 'good.jpg'
  good.write_bytes(_sample_jpeg())
  assert images.load_image(good).ndim == 3  # an intact JPEG still reads


def test_decode_bytes_composites_transparency_over_the_background():
  rgba = np.zeros((8, 10, 4), np.uint8)
  rgba[:, :5] = (10, 20, 30, 255)  # opaque BGR (10, 20, 30)
  rgba[:, 5:, 3] = 0  # transparent
  data = cv2.imencode('.png', rgba)[1].tobytes()
  image = decoding.decode_bytes(
    data, 'a.png', apply_exif=True, background=(1, 2, 3)
  )
  assert image.shape == (8, 10, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(
    image[:, :5], np.broadcast_to((30, 20, 10), (8, 5, 3))
  )
  np.testing.assert_array_equal(
    image[:, 5:], np.broadcast_to((1, 2, 3), (8, 5, 3))
  )
  with pytest.raises(decoding.ImageError, match='b.bin: not a readable image'):
    decoding.decode_bytes(
      b'junk', 'b.bin', apply_exif=True, background=(0, 0, 0)
    )
