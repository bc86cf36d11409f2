"""Tests for regagg_jax.features.images: loading, resizing, buckets, padding."""

import math
import struct

import cv2
import numpy as np
import pytest

from regagg_jax.evaluation import folders
from regagg_jax.features import images


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


def _encode(image_bgr: np.ndarray, extension: str) -> bytes:
  ok, encoded = cv2.imencode(extension, image_bgr)
  assert ok
  return encoded.tobytes()


def _exif_segment(orientation: int) -> bytes:
  """A JPEG APP1 segment holding only an EXIF orientation tag (big-endian)."""
  tiff = (
    b'MM\x00\x2a\x00\x00\x00\x08'
    + struct.pack('>H', 1)
    + struct.pack('>HHIHH', 0x0112, 3, 1, orientation, 0)
    + b'\x00\x00\x00\x00'
  )
  payload = b'Exif\x00\x00' + tiff
  return b'\xff\xe1' + struct.pack('>H', len(payload) + 2) + payload


@pytest.fixture
def photo_bgr(sample_paths):
  return cv2.imread(str(sample_paths[0]), cv2.IMREAD_COLOR)


def test_load_sample_is_rgb_uint8(sample_paths, photo_bgr):
  image = images.load_image(sample_paths[0])
  assert image.dtype == np.uint8 and image.shape == photo_bgr.shape
  np.testing.assert_array_equal(image, photo_bgr[:, :, ::-1])


def test_max_size_shrinks_longer_side(sample_paths):
  image = images.load_image(sample_paths[0], max_size=200)
  assert max(image.shape[:2]) == 200
  assert (
    images.load_image(sample_paths[0], max_size=1000).shape[:2]
    == (images.load_image(sample_paths[0]).shape[:2])
  )


@pytest.mark.parametrize('extension', ['.png', '.jpg'])
def test_grayscale(tmp_path, photo_bgr, extension):
  gray = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
  path = _write(tmp_path / f'gray{extension}', _encode(gray, extension))
  image = images.load_image(path)
  assert image.shape == gray.shape + (3,) and image.dtype == np.uint8
  np.testing.assert_array_equal(image[:, :, 0], image[:, :, 1])
  np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])
  if extension == '.png':  # lossless: exact
    np.testing.assert_array_equal(image[:, :, 0], gray)


def test_16_bit_png(tmp_path):
  rng = np.random.default_rng(0)
  deep = rng.integers(0, 65536, size=(40, 48, 3), dtype=np.uint16)
  path = _write(tmp_path / 'deep.png', _encode(deep, '.png'))
  image = images.load_image(path)
  expected = np.floor(deep[:, :, ::-1].astype(np.float64) / 257.0 + 0.5)
  np.testing.assert_array_equal(image, expected.astype(np.uint8))


def test_alpha_composited_over_mean_pixel(tmp_path):
  bgra = np.zeros((40, 48, 4), np.uint8)
  bgra[..., :3] = (10, 200, 30)  # BGR
  bgra[:, :16, 3] = 255  # opaque
  bgra[:, 16:32, 3] = 0  # transparent
  bgra[:, 32:, 3] = 51  # 20 % opaque
  image = images.load_image(
    _write(tmp_path / 'alpha.png', _encode(bgra, '.png'))
  )
  np.testing.assert_array_equal(image[0, 0], (30, 200, 10))
  np.testing.assert_array_equal(image[0, 20], images.MEAN_RGB)
  expected = np.round(
    0.2 * np.array([30, 200, 10]) + 0.8 * np.array(images.MEAN_RGB)
  )
  np.testing.assert_allclose(image[0, 40], expected, atol=1)


@pytest.mark.parametrize('orientation,turns', [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation(tmp_path, photo_bgr, orientation, turns):
  data = _encode(photo_bgr, '.jpg')
  path = _write(
    tmp_path / 'exif.jpg', data[:2] + _exif_segment(orientation) + data[2:]
  )
  upright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  expected = np.rot90(upright[:, :, ::-1], turns)
  np.testing.assert_array_equal(images.load_image(path), expected)


@pytest.mark.parametrize('orientation', [3, 6, 8])
def test_exif_orientation_ignored_on_request(tmp_path, photo_bgr, orientation):
  data = _encode(photo_bgr, '.jpg')
  path = _write(
    tmp_path / 'exif.jpg', data[:2] + _exif_segment(orientation) + data[2:]
  )
  stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  image = images.load_image(path, apply_exif=False)
  assert image.shape == stored.shape  # orientation 6 / 8 would swap H, W
  np.testing.assert_array_equal(image, stored[:, :, ::-1])


def test_missing_file(tmp_path):
  with pytest.raises(images.ImageError, match='nothing.jpg.*no such'):
    images.load_image(tmp_path / 'nothing.jpg')


def test_empty_file(tmp_path):
  path = _write(tmp_path / 'empty.jpg', b'')
  with pytest.raises(images.ImageError, match='empty.jpg.*empty'):
    images.load_image(path)


def test_garbage_file(tmp_path):
  path = _write(tmp_path / 'garbage.png', np.random.default_rng(0).bytes(5000))
  with pytest.raises(images.ImageError, match='garbage.png.*not a readable'):
    images.load_image(path)


@pytest.mark.parametrize('extension', ['.jpg', '.png'])
def test_truncated_file(tmp_path, photo_bgr, extension):
  data = _encode(photo_bgr, extension)
  path = _write(tmp_path / f'cut{extension}', data[: len(data) // 2])
  with pytest.raises(images.ImageError, match=f'cut\\{extension}'):
    images.load_image(path)


def test_too_small(tmp_path, photo_bgr):
  path = _write(tmp_path / 'tiny.png', _encode(photo_bgr[:20, :100], '.png'))
  with pytest.raises(images.ImageError, match='tiny.png.*smaller than 32'):
    images.load_image(path)
  assert images.load_image(path, min_side=16).shape == (20, 100, 3)
  with pytest.raises(images.ImageError, match='smaller'):
    images.load_image(
      _write(tmp_path / 'wide.png', _encode(photo_bgr[:40, :], '.png')),
      max_size=200,
    )


def test_resize_longer_side(photo_bgr):
  height, width = photo_bgr.shape[:2]
  for size in (100, 384, 1024):
    resized = images.resize_longer_side(photo_bgr, size)
    assert max(resized.shape[:2]) == size and resized.dtype == np.uint8
    assert resized.shape[0] == round(height * size / max(height, width))
  with pytest.raises(ValueError):
    images.resize_longer_side(photo_bgr[:, :, 0], 100)


def test_feature_shape_is_four_ceil_halvings():
  for height in range(1, 80):
    expected = height
    for _ in range(4):
      expected = math.ceil(expected / 2)
    assert images.feature_shape(height, 16) == (expected, 1)


def test_bucket_shape():
  assert images.bucket_shape(288, 384) == (320, 384)
  assert images.bucket_shape(1, 65, multiple=16) == (16, 80)
  with pytest.raises(ValueError):
    images.bucket_shape(100, 100, multiple=24)


def test_group_by_bucket():
  shapes = [(288, 384), (384, 288), (290, 380), (288, 384), (288, 384)]
  groups = images.group_by_bucket(shapes, batch_size=2)
  seen = sorted(i for _, indices in groups for i in indices)
  assert seen == list(range(len(shapes)))
  for shape, indices in groups:
    assert 1 <= len(indices) <= 2
    assert all(images.bucket_shape(*shapes[i]) == shape for i in indices)
  assert len(groups) == 3  # (320, 384) x4 -> 2 batches, (384, 320) -> 1


def test_pad_batch(photo_bgr):
  first, second = photo_bgr[:50, :70, ::-1], photo_bgr[:33, :17, ::-1]
  batch, valid = images.pad_batch([first, second], height=64, width=80)
  assert batch.shape == (2, 64, 80, 3) and batch.dtype == np.uint8
  assert valid.shape == (2, 4, 5) and valid.dtype == bool
  np.testing.assert_array_equal(batch[0, :50, :70], first)
  np.testing.assert_array_equal(batch[1, 40, 60], images.MEAN_RGB)
  assert (batch[0, 50:] == np.asarray(images.MEAN_RGB, np.uint8)).all()
  assert valid[0].sum() == 4 * 5 and valid[1].sum() == 3 * 2
  assert valid[1, :3, :2].all()
  with pytest.raises(ValueError, match='does not fit'):
    images.pad_batch([first], height=32, width=80)
  with pytest.raises(ValueError, match='uint8'):
    images.pad_batch([first.astype(np.float32)], height=64, width=80)


def test_crop_query_rounds_half_to_even_and_clips():
  image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
  # round(1.5)=2, round(2.5)=2, round(6.5)=6, round(8.7)=9, as PIL's crop in revisitop.
  np.testing.assert_array_equal(
    images.crop_query(image, [1.5, 2.5, 6.5, 8.7]), image[2:9, 2:6]
  )
  np.testing.assert_array_equal(
    images.crop_query(image, [-3, 4, 40, 30]), image[4:10, 0:12]
  )
  big = np.zeros((1024, 768, 3), np.uint8)
  assert images.crop_query(big, [136.5, 34.1, 648.5, 955.7]).shape == (
    922,
    512,
    3,
  )
  with pytest.raises(ValueError, match='empty'):
    images.crop_query(image, [5, 5, 5.2, 8])
  with pytest.raises(ValueError, match='x1, y1, x2, y2'):
    images.crop_query(image, [1, 2, 3])


def test_rotate_image_clockwise_by_multiples_of_90():
  image = np.array([[1, 2], [3, 4]], np.uint8)[..., None].repeat(3, axis=2)
  np.testing.assert_array_equal(
    images.rotate_image(image, 90)[..., 0], [[3, 1], [4, 2]]
  )
  np.testing.assert_array_equal(
    images.rotate_image(image, 270)[..., 0], [[2, 4], [1, 3]]
  )
  np.testing.assert_array_equal(images.rotate_image(image, 0), image)
  with pytest.raises(ValueError, match='multiple of 90'):
    images.rotate_image(image, 45)


def test_dangling_symlink_is_reported(tmp_path):
  link = tmp_path / 'gone.jpg'
  link.symlink_to(tmp_path / 'nowhere.jpg')
  with pytest.raises(images.ImageError, match='dangling symbolic link'):
    images.load_image(link)
  assert folders.list_images(tmp_path) == ['gone.jpg']  # listed, so reported
