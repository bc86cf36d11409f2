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
from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import metrics
from regagg_jax.features import images
from regagg_jax.storage import records
from regagg_jax.experiment import modes
from regagg_jax.experiment import reporting
from regagg_jax.aggregation import pca
from regagg_jax.experiment import fitting
from regagg_jax.experiment import pipeline
from regagg_jax.experiment import retrieval
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader
from regagg_jax.experiment import searches
from regagg_jax.experiment import workspace

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_photos(folder, paths, size):
  """Writes the photos shrunk to `size` px into folder (made if needed)."""
  import cv2  # pylint: disable=g-import-not-at-top

  folder.mkdir(parents=True, exist_ok=True)
  for path in paths:
    image = images.resize_longer_side(images.load_image(path), size)
    cv2.imwrite(str(folder / path.name), image[..., ::-1])
  return folder


def _make_folder(folder, sample_paths, *, groups, size):
  """Sample photos of `groups` UKBench groups + groundtruth.json + a bad file."""
  _write_photos(folder, sample_paths[: 4 * groups], size)
  names = {
    path.name: f'object{int(path.stem[7:]) // 4}'
    for path in sample_paths[: 4 * groups]
  }
  (folder / 'zz_unreadable.jpg').write_bytes(b'\xff\xd8 truncated')
  names['zz_unreadable.jpg'] = 'object0'
  (folder / 'groundtruth.json').write_text(json.dumps({'groups': names}))
  return folder


def _only(folder, pattern):
  """The one file of `folder` matching `pattern`."""
  (path,) = folder.glob(pattern)
  return path


def _config(tmp_path, folder):
  config = quick.get_config()
  config.workdir = str(tmp_path / 'work')
  config.eval.dataset = 'folder'
  config.eval.root = str(folder)
  return config


@pytest.fixture(scope='module')
def folder(tmp_path_factory, sample_paths):
  return _make_folder(
    tmp_path_factory.mktemp('photos') / 'photos',
    sample_paths,
    groups=2,
    size=96,
  )


def test_encode_fit_search_eval(tmp_path, folder):
  config = _config(tmp_path, folder)
  modes.run_encode(config)
  modes.run_fit(config)
  result = modes.evaluate(config)
  assert result['num_database'] == 8 and result['num_queries'] == 8
  assert [s[0] for s in result['skipped']] == [
    str(folder / 'zz_unreadable.jpg')
  ]
  assert 0 <= result['mAP'] <= 1 and np.isfinite(result['mP@1'])
  results_dir = tmp_path / 'work' / 'results'
  written = json.loads(_only(results_dir, 'quick-*.json').read_text())
  assert written['mAP'] == result['mAP']
  assert written['method'] == 'O2_R' and written['config']['name'] == 'quick'
  assert written['config']['pca']['dim'] == config.pca.dim
  ukbench = sorted(p.name for p in folder.glob('ukbench*.jpg'))
  assert sorted(written['per_query_ap']) == ukbench
  assert np.mean(list(written['per_query_ap'].values())) == pytest.approx(
    result['mAP']
  )
  modes.evaluate(config)  # a rerun writes a second file
  assert len(list(results_dir.glob('quick-*.json'))) == 2
  stores = os.listdir(tmp_path / 'work' / 'stores')
  fits = os.listdir(tmp_path / 'work' / 'fits')
  assert len(stores) == 1 and len(fits) == 1  # eval reused encode and fit

  config.search.queries = str(folder / 'ukbench00001.jpg')
  config.search.box = '10,5,80,60'
  modes.run_search(config)
  written = json.loads(_only(results_dir, 'search-quick-*.json').read_text())
  assert written['config'] == reporting.resolved(config)
  assert _only(results_dir, 'search-quick-*.png').stat().st_size > 1000
  results = written['queries']
  assert len(results) == 1 and len(results[0]['results']) == config.search.top_k
  scores = [r['score'] for r in results[0]['results']]
  assert np.all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
  assert all(0 <= r['region'] < 8 for r in results[0]['results'])
  csv = _only(results_dir, 'search-quick-*.csv').read_text()
  assert len(csv.strip().splitlines()) == 1 + config.search.top_k
  modes.run_search(config)  # a rerun writes new files, the first are kept
  assert len(list(results_dir.glob('search-quick-*.json'))) == 2
  assert len(list(results_dir.glob('search-quick-*.png'))) == 2


def test_search_a_folder_without_ground_truth(tmp_path, sample_paths):
  photos = _write_photos(tmp_path / 'plain', sample_paths[:5], 80)
  config = _config(tmp_path, photos)
  config.search.queries = str(photos / sample_paths[0].name)
  config.search.top_k = 5
  modes.run_search(config)
  results = json.loads(
    _only(tmp_path / 'work' / 'results', 'search-quick-*.json').read_text()
  )['queries']
  ranked = [os.path.basename(r['image']) for r in results[0]['results']]
  assert sorted(ranked) == sorted(p.name for p in sample_paths[:5])
  assert ranked[0] == sample_paths[0].name  # the query itself comes first
  assert results[0]['results'][0]['score'] == pytest.approx(1, abs=1e-5)


def test_cropped_queries_and_whitening_fitted_on_another_set(
  tmp_path, folder, sample_paths
):
  """The Oxford protocol path: queries cropped to a box at full resolution
  and described by R_M only; whitening learnt on another folder with the
  database's U^1 (as CroW / R-MAC fit on Paris for Oxford)."""
  names = sorted(p.name for p in folder.glob('ukbench*.jpg'))
  queries = [
    {'image': names[0], 'positives': names[1:4], 'box': [8, 4, 90, 70]},
    {'image': names[4], 'positives': names[5:8], 'box': [0, 0, 60, 50]},
  ]
  (folder / 'groundtruth.json').rename(folder / 'groups.json')
  try:
    (folder / 'groundtruth.json').write_text(
      json.dumps({'images': names, 'queries': queries})
    )
    other = _write_photos(tmp_path / 'other', sample_paths[20:26], 96)
    config = _config(tmp_path, folder)
    config.search.query_regions = 'whole'
    config.pca.fit_on, config.pca.fit_root = 'folder', str(other)
    config.pca.dim = 6
    result = modes.evaluate(config)
    dataset = workspace.load_dataset(config)
    database, fitted = workspace.prepare(config, dataset)
    cropped, positions = workspace.query_store(
      config, dataset, database, fitted
    )
    config.eval.crop_queries = False
    full, _ = workspace.query_store(config, dataset, database, fitted)
  finally:
    (folder / 'groups.json').replace(folder / 'groundtruth.json')
  assert result['fitted_on'] == 'other' and result['num_queries'] == 2
  assert np.isfinite(result['mAP'])
  np.testing.assert_array_equal(positions, [0, 1])
  assert cropped.metadata['sizes'] == [[66, 82], [50, 60]]  # the boxes
  assert full.metadata['sizes'] == [
    database.metadata['sizes'][0],
    database.metadata['sizes'][4],
  ]
  np.testing.assert_array_equal(full.descriptors, database.descriptors[[0, 4]])
  assert (
    cropped.metadata['reduction_hash'] == database.metadata['reduction_hash']
  )
  fits = os.listdir(tmp_path / 'work' / 'fits')
  fitted = records.load_fit(tmp_path / 'work' / 'fits' / fits[0])
  assert fitted.metadata['fitted_on'] == 'other'
  assert fitted.metadata['num_images'] == 6


def test_store_round_trip_gives_identical_results(tmp_path, folder):
  config = _config(tmp_path, folder)
  dataset = workspace.load_dataset(config)
  database, fitted = workspace.prepare(config, dataset)
  store_writer.save_store(tmp_path / 'copy', database)
  records.save_fit(tmp_path / 'fit', fitted)
  loaded = store_reader.load_store(tmp_path / 'copy')
  loaded_fit = records.load_fit(tmp_path / 'fit')
  before = retrieval.search(config, database, database, fitted)
  after = retrieval.search(config, loaded, loaded, loaded_fit)
  np.testing.assert_array_equal(after.scores, before.scores)
  np.testing.assert_array_equal(after.ranks, before.ranks)
  np.testing.assert_array_equal(after.best, before.best)


def test_mismatched_store_and_fit_are_refused(tmp_path, folder):
  config = _config(tmp_path, folder)
  dataset = workspace.load_dataset(config)
  database, _ = workspace.prepare(config, dataset)
  other = _config(tmp_path, folder)
  other.pooling.k_prime = 4
  other_database, other_fit = workspace.prepare(other, dataset)
  with pytest.raises(
    ValueError, match='PCA-whitening .* fitted on descriptors'
  ):
    retrieval.search(other, database, database, other_fit)
  with pytest.raises(
    ValueError, match='PCA-whitening .* fitted on descriptors'
  ):
    retrieval.search(config, database, database, other_fit)
  with pytest.raises(
    ValueError, match=r'k_prime: stored 4, given 6.*encode it again'
  ):
    retrieval.search(config, other_database, other_database, other_fit)


def test_command_line_modes(tmp_path, folder):
  workdir = tmp_path / 'cli'
  base = [
    sys.executable,
    'run.py',
    '--config=configs/quick.py',
    '--config.eval.dataset=folder',
    f'--config.eval.root={folder}',
    f'--config.workdir={workdir}',
  ]
  outputs = {}
  for mode in ('encode', 'eval'):
    outputs[mode] = subprocess.run(
      base + [f'--mode={mode}'],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert outputs[mode].returncode == 0, outputs[mode].stderr[-3000:]
  assert 'skipping unreadable image' in outputs['encode'].stderr
  assert 'reusing' in outputs['eval'].stderr  # eval reuses the encoded store
  assert 'mAP' in outputs['eval'].stdout
  assert (
    'skipped ' + str(folder / 'zz_unreadable.jpg') in outputs['eval'].stdout
  )
  result = json.loads(_only(workdir / 'results', 'quick-*.json').read_text())
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
  config.pca.dim = 4  # 12 global vectors: PCA without whitening
  results = {r['method']: r for r in modes.run_demo(config)}
  assert set(results) == {modes.demo_label(*row) for row in modes.DEMO_ROWS}
  assert all(r['D'] == 4 for r in results.values())
  assert results['O2_R (proposed)']['whiten'] and not results['CroW']['whiten']
  assert results['O2_R (proposed)']['mAP'] > 0.8
  assert results['O2_W']['mAP'] > 0.8
  assert os.path.getsize(tmp_path / 'work' / 'fig2.png') > 10_000


def test_killed_store_resumes_only_its_missing_shards(
  tmp_path, folder, encoded_rows
):
  """A store loses a shard (as if killed before writing it): the next run
  encodes only that shard's rows and the store equals the first one."""
  config = _config(tmp_path, folder)
  config.features.shard_size = 3
  dataset = workspace.load_dataset(config)
  first, _ = workspace.prepare(config, dataset)
  (store_dir,) = (tmp_path / 'work' / 'stores').iterdir()
  (store_dir / 'shard_00001.npz').unlink()
  (store_dir / 'metadata.json').unlink()
  with pytest.raises(ValueError, match='unfinished store'):
    store_reader.load_store(store_dir)
  encoded = encoded_rows()
  again, _ = workspace.prepare(config, dataset)
  assert encoded == [[3, 4, 5]]
  np.testing.assert_array_equal(again.descriptors, first.descriptors)
  np.testing.assert_array_equal(again.masks, first.masks)
  assert again.metadata == first.metadata


def test_float16_store_is_close_to_float32(tmp_path, folder):
  config = _config(tmp_path, folder)
  single, _ = workspace.prepare(config, workspace.load_dataset(config))
  config.features.store_dtype = 'float16'
  half, _ = workspace.prepare(config, workspace.load_dataset(config))
  assert half.descriptors.dtype == np.float32
  np.testing.assert_allclose(half.descriptors, single.descriptors, atol=1e-3)
  assert len(os.listdir(tmp_path / 'work' / 'stores')) == 2


def test_whitened_store_equals_whitening_at_search_time(
  tmp_path, folder, sample_paths
):
  """pca.store_whitened: U^1 and eq. (6) learnt on fit_on, the database
  stored whitened; equal to whitening the unwhitened store at search."""
  other = _write_photos(tmp_path / 'other', sample_paths[20:28], 96)
  config = _config(tmp_path, folder)
  config.pca.fit_on, config.pca.fit_root = 'folder', str(other)
  config.pca.store_whitened = True
  config.pca.dim = 6
  dataset = workspace.load_dataset(config)
  database, fitted = workspace.prepare(config, dataset)
  assert database.descriptors.shape[-1] == 6
  assert database.metadata['whitening_hash'] == records.hash_params(
    fitted.whitening
  )
  plain = pipeline.encode(
    config, datasets.database_paths(dataset), reduction=fitted.reduction
  )
  whitened = np.asarray(
    pca.apply(fitted.whitening, plain.descriptors, plain.valid)
  )
  np.testing.assert_allclose(database.descriptors, whitened, atol=2e-5)
  result = modes.evaluate(config)
  unwhitened = retrieval.search(config, plain, plain, fitted)
  queries, _ = workspace.query_store(config, dataset, database, fitted)
  stored = retrieval.search(config, queries, database, fitted)
  np.testing.assert_allclose(stored.scores, unwhitened.scores, atol=1e-4)
  assert np.isfinite(result['mAP'])
  with pytest.raises(ValueError, match='whitened descriptors'):
    fitting.fit(config, database)


@pytest.mark.parametrize('kind', ['flat', 'hnsw'])
def test_region_index_search_matches_exact_search(tmp_path, folder, kind):
  """search.index: FAISS shortlist + exact re-rank; with the whole database
  shortlisted it is the exact ranking, and mAP is unchanged."""
  config = _config(tmp_path, folder)
  exact = modes.evaluate(config)
  config.search.index = kind
  config.search.k_regions = 64
  config.search.shortlist = 8
  approximate = modes.evaluate(config)
  assert approximate['mAP'] == pytest.approx(exact['mAP'], abs=1e-6)
  assert len(os.listdir(tmp_path / 'work' / 'indexes')) == 1
  dataset = workspace.load_dataset(config)
  database, fitted = workspace.prepare(config, dataset)
  regions = searches.search_index(config, dataset, database, fitted)
  config.search.index = 'exact'
  reference = retrieval.search(config, database, database, fitted)
  config.search.index = kind
  ranking = retrieval.search(config, database, database, fitted, regions)
  np.testing.assert_allclose(ranking.scores, reference.scores, atol=1e-5)
  whitened = np.asarray(
    pca.apply(fitted.whitening, database.descriptors, database.valid)
  )
  rows = np.arange(len(database.valid))
  for q in rows:  # the best region attains the score (ties may differ)
    chosen = whitened[rows, ranking.best[q]]  # (N, D)
    attained = np.where(
      database.valid[q][:, None], whitened[q] @ chosen.T, -np.inf
    )
    np.testing.assert_allclose(
      attained.max(axis=0), reference.scores[q], atol=1e-5
    )
  with pytest.raises(ValueError, match='needs the database.s region index'):
    retrieval.search(config, database, database, fitted)


def test_two_processes_encode_one_store(tmp_path, folder):
  """run.py --mode=encode with two jax.distributed processes on localhost:
  each encodes its shards, process 0 finalises; equal to one process."""
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    port = probe.getsockname()[1]
  base = [
    sys.executable,
    'run.py',
    '--config=configs/quick.py',
    '--mode=encode',
    '--config.eval.dataset=folder',
    f'--config.eval.root={folder}',
    '--config.features.shard_size=2',
  ]
  together = [
    subprocess.Popen(
      base
      + [
        f'--config.workdir={tmp_path / "two"}',
        f'--coordinator_address=localhost:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      cwd=REPO_ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in together]
  for process, (_, stderr) in zip(together, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert 'images encoded' in outputs[0][0]  # process 0 reports
  assert 'images encoded' not in outputs[1][0]
  logs = [stderr for _, stderr in outputs]
  assert all('encoding shard' in log for log in logs)  # both did work
  alone = subprocess.run(
    base + [f'--config.workdir={tmp_path / "one"}'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert alone.returncode == 0, alone.stderr[-3000:]
  (two,) = (tmp_path / 'two' / 'stores').iterdir()
  (one,) = (tmp_path / 'one' / 'stores').iterdir()
  two, one = store_reader.load_store(two), store_reader.load_store(one)
  np.testing.assert_allclose(two.descriptors, one.descriptors, atol=1e-6)
  np.testing.assert_array_equal(two.valid, one.valid)
  assert two.metadata['rows'] == one.metadata['rows']


def test_multiple_processes_only_encode(tmp_path, folder):
  result = subprocess.run(
    [
      sys.executable,
      'run.py',
      '--config=configs/quick.py',
      '--mode=eval',
      '--num_processes=2',
      '--coordinator_address=localhost:1',
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  assert 'is for --mode=encode only' in result.stderr


def test_distractors_join_the_database_as_irrelevant(
  tmp_path, folder, sample_paths
):
  """eval.distractors: extra database rows after the dataset's images,
  ranked like any image and never relevant."""
  config = _config(tmp_path, folder)
  clean = modes.evaluate(config)
  config.eval.distractors = str(
    _write_photos(tmp_path / 'r1m', sample_paths[32:38], 96)
  )
  noisy = modes.evaluate(config)
  assert noisy['num_database'] == clean['num_database'] + 6
  dataset = workspace.load_dataset(config)
  database, fitted = workspace.prepare(config, dataset)
  queries, positions = workspace.query_store(config, dataset, database, fitted)
  ranks = searches.dataset_ranks(
    retrieval.search(config, queries, database, fitted), database, positions
  )
  assert ranks.shape == (9, 14) and ranks.max() == 14  # 8 + 6 readable
  read = dict(scored=positions >= 0, present=database.metadata['rows'])
  assert metrics.evaluate(dataset, ranks, **read)['mAP'] == pytest.approx(
    noisy['mAP']
  )  # the unreadable query takes no part
  kept = np.array([row[row < 9] for row in ranks])  # distractors removed
  assert metrics.evaluate(dataset, kept, **read)['mAP'] >= noisy['mAP']
  config.eval.distractors = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='missing'):
    workspace.prepare(config, dataset)


@pytest.mark.slow
def test_demo_draws_boxed_queries_cropped_as_encoded(tmp_path, sample_paths):
  """Queries with boxes: fig2 reads each query cropped as it was encoded,
  so its matched-region mask fits it (the full image gave an IndexError)."""
  folder = _write_photos(tmp_path / 'boxed', sample_paths[:8], 96)
  names = [path.name for path in sample_paths[:8]]
  (folder / 'groundtruth.json').write_text(
    json.dumps(
      {
        'queries': [
          {'image': names[q], 'positives': names[q + 1 : q + 4], 'box': box}
          for q, box in ((0, [4, 6, 70, 50]), (4, [20, 10, 90, 66]))
        ]
      }
    )
  )
  config = _config(tmp_path, folder)
  config.eval.figure_queries = 2
  results = modes.run_demo(config)
  assert len(results) == len(modes.DEMO_ROWS)
  import cv2  # pylint: disable=g-import-not-at-top

  figure = cv2.imread(str(tmp_path / 'work' / 'fig2.png'))
  assert figure is not None and figure.shape[0] > 2 * 128
