"""Tests for regagg_jax.storage.records: hashes, atomic writes and their
leftovers, fits and results files (stores on disk: test_store_writer,
test_store_reader, test_store_header, test_store_format)."""

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from regagg_jax.aggregation import pca
from regagg_jax.storage import atomic
from regagg_jax.storage import records
from tests.storage.stores import random_params
from tests.storage.stores import random_store


@pytest.mark.parametrize('reduction', [True, False])
def test_fit_round_trip_is_identical(tmp_path, reduction):
  rng = np.random.default_rng(6)
  fit = records.Fit(
    reduction=random_params(rng, 8, 3) if reduction else None,
    whitening=random_params(rng, 6, 2),
    metadata={'config_hash': 'abc', 'fitted_on': 'db'},
  )
  records.save_fit(tmp_path / 'fit', fit)
  loaded = records.load_fit(tmp_path / 'fit')
  assert loaded.metadata == fit.metadata
  for got, want in zip(loaded.whitening, fit.whitening):
    assert np.asarray(got).dtype == np.float32
    np.testing.assert_array_equal(got, want)
  assert (loaded.reduction is None) == (not reduction)
  if reduction:
    for got, want in zip(loaded.reduction, fit.reduction):
      np.testing.assert_array_equal(got, want)


def test_hashes_are_stable_and_sensitive():
  sections = {'pooling': {'method': 'o2', 'k_prime': 128}}
  assert records.hash_config(sections) == records.hash_config(
    {'pooling': {'k_prime': 128, 'method': 'o2'}}
  )
  assert records.hash_config(sections) != records.hash_config(
    {'pooling': {'method': 'o2', 'k_prime': 64}}
  )
  rng = np.random.default_rng(7)
  params = random_params(rng, 4, 2)
  assert records.hash_params(params) == records.hash_params(
    pca.PCAParams(*[np.array(a) for a in params])
  )
  changed = params._replace(scale=params.scale + 1)
  assert records.hash_params(params) != records.hash_params(changed)
  assert records.hash_params(None) == 'none'


def test_write_results_json_and_csv(tmp_path):
  rng = np.random.default_rng(8)
  database = random_store(rng, num_images=3, num_regions=2)
  masks = np.zeros((3, 2, 5, 11), bool)
  masks[1, 0, 1:3, 2:5] = True  # cells rows 1-2, cols 2-4
  masks[2, 1, 4, 10] = True  # the last cell, clipped to the image size
  database = database._replace(
    masks=masks,
    grid=np.array([[5, 11]] * 3, np.int32),
    metadata=dict(database.metadata, sizes=[[70, 170]] * 3),
  )
  queries = database._replace(image_paths=('q0.jpg',))
  scores = np.array([[0.1, 0.9, 0.5]], np.float32)
  ranks = np.array([[1, 2, 0]])
  best = np.array([[1, 0, 1]], np.int32)
  records.write_results(
    str(tmp_path / 'out'),
    scores,
    ranks,
    best,
    queries,
    database,
    top_k=2,
    header={'config': {'name': 'x'}},
  )
  written = json.loads((tmp_path / 'out.json').read_text())
  assert written['config'] == {'name': 'x'}
  assert written['queries'] == [
    {
      'query': 'q0.jpg',
      'results': [
        {
          'rank': 0,
          'image': '/images/1.jpg',
          'score': pytest.approx(0.9),
          'region': 0,
          'region_box': [32, 16, 80, 48],
        },
        {
          'rank': 1,
          'image': '/images/2.jpg',
          'score': pytest.approx(0.5),
          'region': 1,
          'region_box': [160, 64, 170, 70],
        },
      ],
    }
  ]
  with open(tmp_path / 'out.csv', newline='') as stream:
    rows = list(csv.reader(stream))
  assert rows[0] == [
    'query',
    'rank',
    'image',
    'score',
    'region',
    'x1',
    'y1',
    'x2',
    'y2',
  ]
  assert rows[1] == [
    'q0.jpg',
    '0',
    '/images/1.jpg',
    '0.900000',
    '0',
    '32',
    '16',
    '80',
    '48',
  ]
  assert len(rows) == 3
