"""Tests for regagg_jax.evaluation.datasets (benchmark ground truth, image lookup)."""

import logging
from pathlib import Path

import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import sources
from regagg_jax.evaluation import folders

from regagg_jax.evaluation import metrics

GND = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'gnd'
needs_gnd = pytest.mark.skipif(
  not GND.is_dir(), reason='ground truth not beside the clone'
)

COUNTS = {  # name: (queries, database images), as the ground-truth files say
  'oxford5k': (55, 5063),
  'paris6k': (55, 6392),
  'roxford5k': (70, 4993),
  'rparis6k': (70, 6322),
  'holidays': (500, 1491),
}


def _perfect_ranks(dataset):
  rows = []
  for positives, junk in zip(dataset.positives, dataset.junk):
    rest = np.setdiff1d(
      np.arange(len(dataset.images)), np.union1d(positives, junk)
    )
    rows.append(np.concatenate([positives, junk, rest]))
  return np.stack(rows)


@needs_gnd
@pytest.mark.parametrize('name', sorted(COUNTS))
def test_benchmark_counts_and_indices(name):
  dataset = datasets.load(name, ground_truth_root=GND)
  num_queries, num_images = COUNTS[name]
  assert (
    len(dataset.queries) == num_queries and len(dataset.images) == num_images
  )
  assert len(dataset.positives) == len(dataset.junk) == num_queries
  assert (
    dataset.query_indices.shape == (num_queries,)
    and dataset.query_indices.dtype == np.int64
  )
  assert all(n.endswith('.jpg') for n in dataset.images + dataset.queries)
  for positives, junk in zip(dataset.positives, dataset.junk):
    assert positives.dtype == np.int64 and junk.dtype == np.int64
    both = np.concatenate([positives, junk])
    assert both.min() >= 0 and both.max() < num_images
    assert np.intersect1d(positives, junk).size == 0
  if dataset.protocol == 'revisited':  # queries are not in the database
    assert np.all(dataset.query_indices == -1)
    assert not set(dataset.queries) & set(dataset.images)
  else:
    assert [dataset.images[i] for i in dataset.query_indices] == list(
      dataset.queries
    )
  if name == 'holidays':
    assert (
      dataset.boxes is None
      and dataset.max_size == datasets.HOLIDAYS_MAX_SIZE == 1024
    )
    assert dataset.apply_exif
  else:
    assert dataset.boxes.shape == (num_queries, 4) and dataset.max_size is None
    assert not dataset.apply_exif  # boxes refer to the stored pixels
    assert np.all(dataset.boxes[:, 2] > dataset.boxes[:, 0])
    assert np.all(dataset.boxes[:, 3] > dataset.boxes[:, 1])
  scores = metrics.evaluate(dataset, _perfect_ranks(dataset))
  assert scores and all(
    v == pytest.approx(1.0, abs=1e-12) for v in scores.values()
  ), scores


@needs_gnd
def test_oxford_queries_are_their_own_positives_and_paris_corrupt_images_unlisted():
  oxford = datasets.load('oxford5k', ground_truth_root=GND)
  assert all(q in p for q, p in zip(oxford.query_indices, oxford.positives))
  paris = datasets.load('paris6k', ground_truth_root=GND)
  assert len(sources.PARIS6K_CORRUPT) == 20
  assert (
    len(paris.images) + len(sources.PARIS6K_CORRUPT) == 6412
  )  # the paper's Paris size
  assert not {Path(n).stem for n in paris.images} & set(sources.PARIS6K_CORRUPT)


@needs_gnd
@pytest.mark.parametrize(
  'name, original', [('roxford5k', 'oxford5k'), ('rparis6k', 'paris6k')]
)
def test_revisited_labels(name, original):
  revisited = datasets.load(name, ground_truth_root=GND)
  assert revisited.protocol == 'revisited'
  for easy, hard, junk, positives in zip(
    revisited.easy, revisited.hard, revisited.junk, revisited.positives
  ):
    np.testing.assert_array_equal(
      np.sort(positives), np.sort(np.concatenate([easy, hard]))
    )
    assert (
      np.intersect1d(easy, hard).size == np.intersect1d(easy, junk).size == 0
    )
    assert np.intersect1d(hard, junk).size == 0
  # The 55 original queries keep their boxes in the revisited annotation.
  old = datasets.load(original, ground_truth_root=GND)
  old_boxes = dict(zip(old.queries, old.boxes))
  shared = [q for q in revisited.queries if q in old_boxes]
  assert len(shared) == 55
  for query, box in zip(revisited.queries, revisited.boxes):
    if query in old_boxes:
      np.testing.assert_allclose(box, old_boxes[query])


@needs_gnd
def test_holidays_ground_truth_matches_file_name_groups():
  holidays = datasets.load('holidays', ground_truth_root=GND)
  groups = np.array([int(Path(n).stem) // 100 for n in holidays.images])
  assert all(int(Path(q).stem) % 100 == 0 for q in holidays.queries)
  for q, positives, junk in zip(
    holidays.query_indices, holidays.positives, holidays.junk
  ):
    np.testing.assert_array_equal(
      junk, [q]
    )  # the query is dropped from its own ranking
    expected = np.flatnonzero(groups == groups[q])
    np.testing.assert_array_equal(positives, expected[expected != q])


def test_bundled_ukbench_samples():
  samples = datasets.load('samples')
  assert len(samples.images) == 56 and samples.protocol == 'ukbench'
  ids = np.array([int(Path(n).stem[len('ukbench') :]) for n in samples.images])
  np.testing.assert_array_equal(samples.groups, ids // 4)
  assert np.all(np.bincount(samples.groups) == 4) and samples.groups.max() == 13
  assert all(
    q in p and len(p) == 4
    for q, p in zip(samples.query_indices, samples.positives)
  )
  assert len(datasets.database_paths(samples)) == 56
  scores = metrics.evaluate(samples, _perfect_ranks(samples))
  assert scores == {'N-S': 4.0, 'mAP': pytest.approx(1.0, abs=1e-12)}
  assert samples.apply_exif


def test_rotations(tmp_path):
  path = tmp_path / 'rotations.txt'
  path.write_text('# name degrees clockwise\n100000.jpg 90\n\n100001.jpg -90\n')
  assert datasets.load_rotations(path) == {'100000.jpg': 90, '100001.jpg': 270}
  path.write_text('100000.jpg 45\n')
  with pytest.raises(ValueError, match='multiple of 90'):
    datasets.load_rotations(path)
  if GND.is_dir():
    path.write_text('100000.jpg 90\n')
    holidays = datasets.load(
      'holidays', ground_truth_root=GND, rotation_file=path
    )
    assert holidays.rotations == {'100000.jpg': 90}
    with pytest.raises(ValueError, match='holidays only'):
      datasets.load('oxford5k', ground_truth_root=GND, rotation_file=path)


def test_missing_image_root_names_the_folder(tmp_path, touch):
  samples = datasets.load('samples')
  missing = tmp_path / 'no_such_folder'
  with pytest.raises(sources.DatasetNotFoundError, match='no_such_folder'):
    datasets.database_paths(samples, missing)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    datasets.load_ukbench(missing)
  with pytest.raises(sources.DatasetNotFoundError, match='no ukbenchNNNNN.jpg'):
    datasets.load_ukbench(tmp_path)
  with pytest.raises(
    sources.DatasetNotFoundError, match='no ground truth file'
  ):
    folders.load_folder(tmp_path)
  if GND.is_dir():
    oxford = datasets.load('oxford5k', ground_truth_root=GND)
    with pytest.raises(sources.DatasetNotFoundError) as error:
      datasets.query_paths(oxford, missing)
    message = str(error.value)
    assert str(missing) in message
    assert 'https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/' in message
    with pytest.raises(sources.DatasetNotFoundError, match='pass image_root'):
      datasets.database_paths(oxford)
    touch(missing, oxford.queries[:3])
    with pytest.raises(
      sources.DatasetNotFoundError, match=r'52 of 55 images.*ashmolean_000'
    ):
      datasets.query_paths(oxford, missing)
  with pytest.raises(
    sources.DatasetNotFoundError, match='no ground truth file'
  ):
    datasets.load('oxford5k', ground_truth_root=tmp_path)
  with pytest.raises(ValueError, match='unknown benchmark'):
    datasets.load_benchmark('oxford105k')
  with pytest.raises(ValueError, match='neither a benchmark'):
    datasets.load('oxford105k')


def test_nested_layout_found_and_corrupt_paris_files_reported(
  tmp_path, caplog, touch
):
  names = ('paris_louvre_000001.jpg', 'paris_eiffel_000002.jpg')
  touch(
    tmp_path,
    [
      'paris/louvre/' + names[0],
      'paris/eiffel/' + names[1],
      'paris/louvre/paris_louvre_000136.jpg',
    ],
  )
  dataset = datasets.Dataset(
    'paris6k',
    'oxford',
    names,
    names[:1],
    np.array([0]),
    None,
    (np.array([1]),),
    (np.zeros(0, np.int64),),
  )
  with caplog.at_level(logging.WARNING):
    paths = datasets.database_paths(dataset, tmp_path)
  assert paths == [
    tmp_path / 'paris/louvre' / names[0],
    tmp_path / 'paris/eiffel' / names[1],
  ]
  assert 'paris_louvre_000136.jpg' in caplog.text and 'corrupt' in caplog.text
  assert 'paris_louvre_000136.jpg' not in ' '.join(
    folders.list_images(tmp_path)
  )
  # The flat layout (revisitop's jpg/ folder) is found directly and reported the same way.
  flat = tmp_path / 'flat'
  touch(flat, list(names) + ['paris_triomphe_000867.jpg'])
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert datasets.database_paths(dataset, flat) == [flat / n for n in names]
  assert (
    'skipping 1 known-corrupt' in caplog.text
    and 'paris_triomphe_000867' in caplog.text
  )
