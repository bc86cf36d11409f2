"""Tests of features/reading.py's checks of hostile inputs."""

import cv2
import numpy as np
import pytest

from regagg_jax.features import images
from regagg_jax.features import reading


def test_box_outside_the_image_is_an_error_naming_file_and_field(tmp_path):
  path = tmp_path / 'q.png'
  cv2.imwrite(str(path), np.zeros((40, 60, 3), np.uint8))
  with pytest.raises(images.ImageError) as error:
    reading.load(path, box=[0, 0, 61, 40])
  assert str(path) in str(error.value)
  assert '"box"' in str(error.value) and '60x40' in str(error.value)
  image = reading.load(path, box=[10, 2, 60, 40])
  assert image.shape == (38, 50, 3)
