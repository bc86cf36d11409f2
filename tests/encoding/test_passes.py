"""Tests of regagg_jax.encoding.passes: the batch guards and the outputs
-> store assembly that file_encoder and method_encoder share."""

import numpy as np
import pytest

from regagg_jax.encoding import passes
from regagg_jax.encoding import resources
from regagg_jax.features import reading
from regagg_jax.storage import records


def test_collect_outputs_cuts_masks_to_each_image_grid_and_copies():
  """Padding slots are dropped, masks are cut to images.feature_shape of
  each image's size, and the kept arrays do not alias the batch's."""
  descriptors = np.arange(3 * 2 * 5, dtype=np.float32).reshape(3, 2, 5)
  valid = np.array([[True, False], [True, True], [False, False]])
  masks = np.ones((3, 2, 4, 4), bool)
  sizes = np.array([[64, 48], [32, 64], [64, 64]], np.int32)  # slot 2: pad
  outputs = {}
  passes.collect_outputs(outputs, [7, 2], sizes, descriptors, valid, masks)
  assert sorted(outputs) == [2, 7]
  kept_descriptors, kept_valid, kept_masks, size = outputs[7]
  np.testing.assert_array_equal(kept_descriptors, descriptors[0])
  np.testing.assert_array_equal(kept_valid, valid[0])
  assert size == (64, 48) and kept_masks.shape == (2, 4, 3)  # 64 x 48 px
  assert outputs[2][2].shape == (2, 2, 4) and outputs[2][3] == (32, 64)
  descriptors[0] = -1
  assert kept_descriptors.min() >= 0  # a copy


def test_assemble_store_orders_rows_and_pads_masks():
  """Rows in the order asked, missing ones left out, masks zero-padded to
  the largest grid, the metadata recorded."""
  paths = ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']
  outputs = {
    3: (
      np.full((2, 4), 3, np.float32),
      np.array([True, False]),
      np.ones((2, 2, 3), bool),
      (32, 48),
    ),
    0: (
      np.full((2, 4), 1, np.float32),
      np.array([True, True]),
      np.ones((2, 4, 2), bool),
      (64, 32),
    ),
  }
  skipped = [['b.jpg', 'not a readable image']]
  store = passes.assemble_store(
    paths, [3, 1, 0], False, outputs, skipped, 2, None
  )
  assert store.image_paths == ('d.jpg', 'a.jpg')
  assert store.descriptors.shape == (2, 2, 4)
  assert store.descriptors.dtype == np.float32
  np.testing.assert_array_equal(store.descriptors[:, 0, 0], [3, 1])
  np.testing.assert_array_equal(store.valid, [[True, False], [True, True]])
  assert store.masks.shape == (2, 2, 4, 3)
  assert store.masks[0, :, :2, :3].all() and not store.masks[0, :, 2:].any()
  assert store.masks[1, :, :, :2].all() and not store.masks[1, :, :, 2:].any()
  np.testing.assert_array_equal(store.grid, [[2, 3], [4, 2]])
  assert store.metadata['rows'] == [3, 0]
  assert store.metadata['sizes'] == [[32, 48], [64, 32]]
  assert store.metadata['skipped'] == skipped
  assert store.metadata['apply_exif'] is False
  assert store.metadata['reduction_hash'] == 'none'
  assert store.metadata['inputs_hash'] == records.hash_config(paths)
  empty = passes.assemble_store(paths, [1], True, {}, [], 2, None)
  assert empty.descriptors.shape == (0, 2, 0)


def test_guard_batches_counts_the_images_done(monkeypatch):
  """Memory maps are checked before each batch with the images done so far;
  a failed allocation inside a guard names the stage and that count."""
  checked = []
  monkeypatch.setattr(
    resources,
    'release_compiled',
    lambda done, what: checked.append((done, what)),
  )
  batches = [reading.make_batch([0, 1], [np.zeros((8, 8, 3), np.uint8)] * 2, 2)]
  batches.append(reading.make_batch([2], [np.zeros((8, 8, 3), np.uint8)], 2))
  guarded = passes.guard_batches(batches, 'stage', 3, 'the settings')
  for guard, batch in guarded:
    if batch.rows == [2]:
      with pytest.raises(resources.ResourceError) as raised:
        with guard:
          raise MemoryError('Unable to allocate')
    else:
      with guard:
        pass
  assert checked == [(0, 'stage'), (2, 'stage')]
  assert str(raised.value).startswith('stage failed after 2 of 3 images')
  assert 'the settings' in str(raised.value)


def test_read_guarded_checks_reads_and_guards_in_order(sample_paths, tmp_path):
  """Rows are checked first; the batches `ahead` come first, then read_rows
  read on threads (an unreadable one skipped), each under its guard with
  the pass's settings."""
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'not a jpeg')
  paths = [str(p) for p in sample_paths[:3]] + [str(broken)]
  how = dict(
    boxes=None,
    rotations=None,
    max_size=32,
    apply_exif=True,
    batch_size=2,
    num_threads=2,
    prefetch=1,
  )
  with pytest.raises(ValueError, match='must not repeat'):
    passes.read_guarded(paths, [0, 0], [], what='stage', **how)
  ahead = [reading.make_batch([0], [np.zeros((8, 8, 3), np.uint8)], 2)]
  skipped = []
  read, guarded, settings = passes.read_guarded(
    paths,
    [0, 1, 2, 3],
    skipped,
    what='stage',
    also_lower='features.cache_mib',
    ahead=ahead,
    read_rows=[1, 2, 3],
    **how,
  )
  assert settings == (
    'features.batch_size (2), features.max_size (32) or features.cache_mib'
  )
  assert max(read(1).shape[:2]) == 32 and read(1).dtype == np.uint8
  rows = []
  for guard, batch in guarded:
    with guard:
      rows.append(batch.rows)
  assert rows[0] is ahead[0].rows and sorted(sum(rows[1:], [])) == [1, 2]
  assert [path for path, _ in skipped] == [str(broken)]
