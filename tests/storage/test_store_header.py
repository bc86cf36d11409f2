"""Tests for regagg_jax.storage.store_header: a store reopened only with its
settings, and encoded parts that do not belong to it refused."""

import json
import os

import numpy as np
import pytest

from regagg_jax.aggregation import pca
from regagg_jax.storage import store_header
from regagg_jax.storage import store_reader
from tests.storage.stores import Encoder
from tests.storage.stores import HEADER
from tests.storage.stores import PATHS
from tests.storage.stores import build
from tests.storage.stores import encoded
from tests.storage.stores import random_params
from tests.storage.stores import shard_files


@pytest.mark.parametrize(
  'change, message',
  [
    (
      dict(header=dict(HEADER, config_hash='xyz')),
      "header.config_hash: stored 'abc', given 'xyz'",
    ),
    (dict(header=dict(HEADER, extra=1)), 'header.extra: stored None, given 1'),
    (
      dict(header=dict(HEADER, config={'regions': {'n_max': 10, 'n_min': 3}})),
      'header.config.regions.n_max: stored 60, given 10; '
      'header.config.regions.n_min: stored 300, given 3',
    ),
    (dict(shard_size=5), 'shard_size: stored 4, given 5'),
    (dict(dtype='float16'), "dtype: stored 'float32', given 'float16'"),
    (
      dict(image_paths=PATHS[:5] + ['/other.jpg'] + PATHS[6:]),
      'image_paths: 10 stored, 10 given, first difference at row 5',
    ),
    (
      dict(image_paths=PATHS[:-1]),
      'image_paths: 10 stored, 9 given, first difference at row 9',
    ),
    (
      dict(reduction=pca.PCAParams(np.zeros(2), np.eye(2), np.ones(2))),
      "reduction_hash: stored 'none', given '",
    ),
  ],
)
def test_mismatched_store_is_never_extended(tmp_path, change, message):
  expected = encoded(np.random.default_rng(14))
  build(tmp_path / 's', Encoder(expected), shards=[0])
  before = sorted(os.listdir(tmp_path / 's'))
  encode_part = Encoder(expected)
  with pytest.raises(
    ValueError, match='holds a store made with other settings'
  ) as error:
    build(tmp_path / 's', encode_part, **change)
  assert message in str(error.value) and str(tmp_path / 's') in str(error.value)
  assert 'it is not extended' in str(error.value)
  assert encode_part.calls == []
  assert sorted(os.listdir(tmp_path / 's')) == before


def test_parts_that_do_not_belong_are_refused(tmp_path):
  rng = np.random.default_rng(15)
  expected = encoded(rng)
  cases = [
    (
      Encoder(expected, config_hash='xyz'),
      {},
      "returned config_hash 'xyz', the store header has 'abc'",
    ),
    (
      Encoder(expected, whitening_hash='0123'),
      dict(header={'config_hash': 'abc'}),
      'whitened descriptors: record their whitening_hash',
    ),
    (
      lambda rows: Encoder(expected)([r + 4 for r in rows]),
      {},
      'returned rows',
    ),
    (
      Encoder(expected._replace(reduction=random_params(rng, 3, 2))),
      {},
      'used another U\\^1',
    ),
  ]
  for number, (encode_part, kwargs, message) in enumerate(cases):
    with pytest.raises(ValueError, match=message):
      build(tmp_path / str(number), encode_part, **kwargs)
    assert not shard_files(tmp_path / str(number))
  with pytest.raises(ValueError, match='header reduction_hash is not'):
    build(tmp_path / 'r', None, header=dict(HEADER, reduction_hash='1'))
  with pytest.raises(ValueError, match='shard_size must be a positive int'):
    build(tmp_path / 'z', None, shard_size=0)


def test_whitened_store_records_its_whitening_hash(tmp_path):
  whitened = encoded(np.random.default_rng(16))
  header = dict(HEADER, whitening_hash='0123')
  whitened = whitened._replace(metadata=dict(whitened.metadata, **header))
  assert build(tmp_path / 's', Encoder(whitened), header=header)
  record = json.loads((tmp_path / 's' / 'header.json').read_text())
  assert record['header']['whitening_hash'] == '0123'
  assert (
    store_reader.load_store(tmp_path / 's').metadata['whitening_hash'] == '0123'
  )


def test_store_record_names_the_settings_and_refuses_other_dtypes():
  record = store_header.store_record(
    PATHS[:2],
    HEADER,
    4,
    'float16',
    random_params(np.random.default_rng(0), 3, 2),
  )
  assert record['image_paths'] == PATHS[:2]
  assert (record['header'], record['shard_size'], record['dtype']) == (
    HEADER,
    4,
    'float16',
  )
  assert record['reduction_hash'] != 'none'
  with pytest.raises(ValueError, match='dtype must be one of'):
    store_header.store_record(PATHS, HEADER, 4, 'int8', None)


def test_open_store_writes_the_header_then_checks_it(tmp_path):
  record = store_header.store_record(PATHS, HEADER, 4, 'float32', None)
  store_header.open_store(tmp_path / 's', record, None)
  assert sorted(os.listdir(tmp_path / 's')) == ['header.json']
  store_header.open_store(tmp_path / 's', record, None)  # the same: fine
  with pytest.raises(ValueError, match='shard_size: stored 4, given 5'):
    store_header.open_store(tmp_path / 's', dict(record, shard_size=5), None)
