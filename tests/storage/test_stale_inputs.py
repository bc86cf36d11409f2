"""A photo replaced under the same name (its mtime restored) after an eval:
the rerun gives what a fresh workdir gives, re-encoding only what depends
on it (issue 17, "Stale store")."""

import json
import os
import shutil

import numpy as np
import pytest

from configs import quick
from regagg_jax.experiment import modes
from regagg_jax.experiment import workspace
from regagg_jax.storage import store_reader


def _folder(tmp_path, sample_paths, groups):
  """Sample photos of `groups` UKBench objects and their groundtruth.json."""
  photos = tmp_path / 'photos'
  photos.mkdir()
  names = {}
  for path in sample_paths[: 4 * groups]:
    shutil.copy(path, photos)
    names[path.name] = f'object{int(path.stem[7:]) // 4}'
  (photos / 'groundtruth.json').write_text(json.dumps({'groups': names}))
  return photos


def _config(photos, workdir, reduction_images):
  config = quick.get_config()
  config.workdir = str(workdir)
  config.eval.dataset, config.eval.root = 'folder', str(photos)
  config.features.shard_size = 4
  config.pooling.reduction_images = reduction_images
  config.eval.figure_queries = 0
  return config


def _replace(photo, other):
  """Writes other's bytes over photo, its atime and mtime put back."""
  status = os.stat(photo)
  shutil.copyfile(other, photo)
  os.utime(photo, ns=(status.st_atime_ns, status.st_mtime_ns))
  assert os.stat(photo).st_mtime_ns == status.st_mtime_ns


def _database(config):
  return workspace.prepare(config, workspace.load_dataset(config))


def _assert_same_as_fresh(config, photos, tmp_path, rerun):
  fresh_config = _config(
    photos, tmp_path / 'fresh', config.pooling.reduction_images
  )
  fresh = modes.evaluate(fresh_config)
  assert rerun['mAP'] == fresh['mAP']
  assert rerun['per_query_ap'] == fresh['per_query_ap']
  (store, fitted), (fresh_store, fresh_fitted) = map(
    _database, (config, fresh_config)
  )
  np.testing.assert_array_equal(store.descriptors, fresh_store.descriptors)
  for name in ('reduction', 'whitening'):
    for got, want in zip(getattr(fitted, name), getattr(fresh_fitted, name)):
      np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_replaced_photo_re_encodes_its_shard_and_refits_whitening(
  tmp_path, sample_paths, encoded_rows, monkeypatch
):
  """U^1 fitted on rows 0 and 11 only: replacing row 5 re-encodes shard 1
  (rows 4-7) alone, keeps U^1, refits the whitening on the new store."""
  photos = _folder(tmp_path, sample_paths, groups=3)
  config = _config(photos, tmp_path / 'work', reduction_images=2)
  first = modes.evaluate(config)
  before = _database(config)[0].descriptors
  _replace(photos / sample_paths[5].name, sample_paths[9])
  (store_dir,) = (tmp_path / 'work' / 'stores').iterdir()
  with pytest.raises(ValueError, match=f'1 image .*{sample_paths[5].name}'):
    store_reader.load_store(store_dir)

  encoded = encoded_rows()  # fitting U^1 again fails the test
  rerun = modes.evaluate(config)
  assert encoded == [[4, 5, 6, 7]]
  after = _database(config)[0].descriptors
  assert not np.array_equal(after[5], before[5])
  np.testing.assert_array_equal(np.delete(after, 5, 0), np.delete(before, 5, 0))
  assert rerun['mAP'] != first['mAP']
  monkeypatch.undo()
  _assert_same_as_fresh(config, photos, tmp_path, rerun)


@pytest.mark.slow
def test_photo_u1_was_fitted_on_re_encodes_the_whole_store(
  tmp_path, sample_paths
):
  """U^1 (eq. 4) fitted on every image: replacing one refits it, so every
  shard is encoded again."""
  photos = _folder(tmp_path, sample_paths, groups=2)
  config = _config(photos, tmp_path / 'work', reduction_images=10000)
  modes.evaluate(config)
  before = _database(config)[0]
  _replace(photos / sample_paths[2].name, sample_paths[6])
  rerun = modes.evaluate(config)
  after = _database(config)[0]
  assert not np.array_equal(
    after.reduction.components, before.reduction.components
  )
  _assert_same_as_fresh(config, photos, tmp_path, rerun)
