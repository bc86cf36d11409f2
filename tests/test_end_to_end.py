"""End to end on small real images: encode -> fit -> search -> eval.

Runs the quick config (tiny random VGG) on a folder of sample photos with a
groups ground truth and one unreadable file, through the pipeline functions
and through run.py; one test with the real weights checks that the proposed
method retrieves the right objects.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quick
from regagg_jax import images
from regagg_jax import index
from regagg_jax import modes
from regagg_jax import pipeline
from regagg_jax import workspace

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_folder(folder, sample_paths, *, groups, size):
  """Sample photos of `groups` UKBench groups + groundtruth.json + a bad file."""
  import cv2  # pylint: disable=g-import-not-at-top
  folder.mkdir(parents=True, exist_ok=True)
  names = {}
  for path in sample_paths[:4 * groups]:
    image = images.resize_longer_side(images.load_image(path), size)
    cv2.imwrite(str(folder / path.name), image[..., ::-1])
    names[path.name] = f'object{int(path.stem[7:]) // 4}'
  (folder / 'zz_unreadable.jpg').write_bytes(b'\xff\xd8 truncated')
  names['zz_unreadable.jpg'] = 'object0'
  (folder / 'groundtruth.json').write_text(json.dumps({'groups': names}))
  return folder


def _config(tmp_path, folder):
  config = quick.get_config()
  config.workdir = str(tmp_path / 'work')
  config.eval.dataset = 'folder'
  config.eval.root = str(folder)
  return config


@pytest.fixture(scope='module')
def folder(tmp_path_factory, sample_paths):
  return _make_folder(tmp_path_factory.mktemp('photos') / 'photos',
                      sample_paths, groups=2, size=96)


def test_encode_fit_search_eval(tmp_path, folder):
  config = _config(tmp_path, folder)
  modes.run_encode(config)
  modes.run_fit(config)
  result = modes.evaluate(config)
  assert result['num_database'] == 8 and result['num_queries'] == 8
  assert [s[0] for s in result['skipped']] == [str(folder / 'zz_unreadable.jpg')]
  assert 0 <= result['mAP'] <= 1 and np.isfinite(result['mP@1'])
  written = json.loads((tmp_path / 'work' / 'results' / 'quick.json').read_text())
  assert written['mAP'] == result['mAP']
  stores = os.listdir(tmp_path / 'work' / 'stores')
  fits = os.listdir(tmp_path / 'work' / 'fits')
  assert len(stores) == 1 and len(fits) == 1  # eval reused encode and fit

  config.search.queries = str(folder / 'ukbench00001.jpg')
  config.search.box = '10,5,80,60'
  modes.run_search(config)
  results = json.loads((tmp_path / 'work' / 'results' /
                        'search-quick.json').read_text())
  assert len(results) == 1 and len(results[0]['results']) == config.search.top_k
  scores = [r['score'] for r in results[0]['results']]
  assert np.all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
  assert all(0 <= r['region'] < 8 for r in results[0]['results'])
  csv = (tmp_path / 'work' / 'results' / 'search-quick.csv').read_text()
  assert len(csv.strip().splitlines()) == 1 + config.search.top_k


def test_search_a_folder_without_ground_truth(tmp_path, sample_paths):
  import cv2  # pylint: disable=g-import-not-at-top
  photos = tmp_path / 'plain'
  photos.mkdir()
  for path in sample_paths[:5]:
    image = images.resize_longer_side(images.load_image(path), 80)
    cv2.imwrite(str(photos / path.name), image[..., ::-1])
  config = _config(tmp_path, photos)
  config.search.queries = str(photos / sample_paths[0].name)
  config.search.top_k = 5
  modes.run_search(config)
  results = json.loads((tmp_path / 'work' / 'results' /
                        'search-quick.json').read_text())
  ranked = [os.path.basename(r['image']) for r in results[0]['results']]
  assert sorted(ranked) == sorted(p.name for p in sample_paths[:5])
  assert ranked[0] == sample_paths[0].name  # the query itself comes first
  assert results[0]['results'][0]['score'] == pytest.approx(1, abs=1e-5)


def test_cropped_queries_and_whitening_fitted_on_another_set(tmp_path, folder,
                                                            sample_paths):
  """The Oxford protocol path: queries cropped to a box at full resolution
  and described by R_M only; whitening learnt on another folder with the
  database's U^1 (as CroW / R-MAC fit on Paris for Oxford)."""
  import cv2  # pylint: disable=g-import-not-at-top
  names = sorted(p.name for p in folder.glob('ukbench*.jpg'))
  queries = [{'image': names[0], 'positives': names[1:4], 'box': [8, 4, 90, 70]},
             {'image': names[4], 'positives': names[5:8], 'box': [0, 0, 60, 50]}]
  (folder / 'groundtruth.json').rename(folder / 'groups.json')
  try:
    (folder / 'groundtruth.json').write_text(json.dumps(
        {'images': names, 'queries': queries}))
    other = tmp_path / 'other'
    other.mkdir()
    for path in sample_paths[20:26]:
      image = images.resize_longer_side(images.load_image(path), 96)
      cv2.imwrite(str(other / path.name), image[..., ::-1])
    config = _config(tmp_path, folder)
    config.search.query_regions = 'whole'
    config.pca.fit_on, config.pca.fit_root = 'folder', str(other)
    config.pca.dim = 6
    result = modes.evaluate(config)
    dataset = workspace.load_dataset(config)
    database = workspace.database_store(config, dataset)
    cropped, positions = workspace.query_store(config, dataset, database)
    config.eval.crop_queries = False
    full, _ = workspace.query_store(config, dataset, database)
  finally:
    (folder / 'groups.json').replace(folder / 'groundtruth.json')
  assert result['fitted_on'] == 'other' and result['num_queries'] == 2
  assert np.isfinite(result['mAP'])
  np.testing.assert_array_equal(positions, [0, 1])
  assert cropped.metadata['sizes'] == [[66, 82], [50, 60]]  # the boxes
  assert full.metadata['sizes'] == [database.metadata['sizes'][0],
                                    database.metadata['sizes'][4]]
  np.testing.assert_array_equal(full.descriptors, database.descriptors[[0, 4]])
  assert cropped.metadata['reduction_hash'] == database.metadata['reduction_hash']
  fits = os.listdir(tmp_path / 'work' / 'fits')
  fitted = index.load_fit(tmp_path / 'work' / 'fits' / fits[0])
  assert fitted.metadata['fitted_on'] == 'other'
  assert fitted.metadata['num_images'] == 6


def test_store_round_trip_gives_identical_results(tmp_path, folder):
  config = _config(tmp_path, folder)
  dataset = workspace.load_dataset(config)
  database = workspace.database_store(config, dataset)
  fitted = workspace.fitted_whitening(config, dataset, database)
  index.save_store(tmp_path / 'copy', database)
  index.save_fit(tmp_path / 'fit', fitted)
  loaded = index.load_store(tmp_path / 'copy')
  loaded_fit = index.load_fit(tmp_path / 'fit')
  before = pipeline.search(config, database, database, fitted)
  after = pipeline.search(config, loaded, loaded, loaded_fit)
  np.testing.assert_array_equal(after.scores, before.scores)
  np.testing.assert_array_equal(after.ranks, before.ranks)
  np.testing.assert_array_equal(after.best, before.best)


def test_mismatched_store_and_fit_are_refused(tmp_path, folder):
  config = _config(tmp_path, folder)
  dataset = workspace.load_dataset(config)
  database = workspace.database_store(config, dataset)
  other = _config(tmp_path, folder)
  other.pooling.k_prime = 4
  other_database = workspace.database_store(other, dataset)
  other_fit = workspace.fitted_whitening(other, dataset, other_database)
  with pytest.raises(ValueError, match='PCA-whitening .* fitted on descriptors'):
    pipeline.search(other, database, database, other_fit)
  with pytest.raises(ValueError, match='PCA-whitening .* fitted on descriptors'):
    pipeline.search(config, database, database, other_fit)
  with pytest.raises(ValueError, match=r'k_prime: 4 -> 6.*encode it again'):
    pipeline.search(config, other_database, other_database, other_fit)


def test_command_line_modes(tmp_path, folder):
  workdir = tmp_path / 'cli'
  base = [sys.executable, 'run.py', '--config=configs/quick.py',
          '--config.eval.dataset=folder', f'--config.eval.root={folder}',
          f'--config.workdir={workdir}']
  outputs = {}
  for mode in ('encode', 'eval'):
    outputs[mode] = subprocess.run(base + [f'--mode={mode}'], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=300)
    assert outputs[mode].returncode == 0, outputs[mode].stderr[-3000:]
  assert 'skipping unreadable image' in outputs['encode'].stderr
  assert 'reusing' in outputs['eval'].stderr  # eval reuses the encoded store
  assert 'mAP' in outputs['eval'].stdout
  assert 'skipped ' + str(folder / 'zz_unreadable.jpg') in outputs['eval'].stdout
  result = json.loads((workdir / 'results' / 'quick.json').read_text())
  assert np.isfinite(result['mAP'])


@pytest.mark.weights
@pytest.mark.slow
def test_demo_with_real_weights_retrieves_objects(tmp_path, sample_paths):
  """The demo path (every method, figure) on 3 objects with real VGG19."""
  folder = _make_folder(tmp_path / 'three', sample_paths, groups=3, size=256)
  config = _config(tmp_path, folder)
  config.features.weights = 'imagenet'
  config.features.max_size = 0
  config.regions.n_max, config.regions.n_min = 4000, 300
  config.pooling.k_prime = 32
  config.pca.dim, config.pca.min_vectors_per_dim = 4, 3  # 12 global vectors
  results = {r['method']: r for r in modes.run_demo(config)}
  assert set(results) == set(modes.DEMO_ROWS)
  assert all(r['D'] == 4 for r in results.values())
  assert results['O2_R (proposed)']['mAP'] > 0.8
  assert results['O2_W']['mAP'] > 0.8
  assert os.path.getsize(tmp_path / 'work' / 'fig2.png') > 10_000
