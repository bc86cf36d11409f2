"""Tests for regagg_jax.storage.provenance: which record belongs to what."""

import pytest

from regagg_jax.storage import provenance


def test_differences_name_nested_fields_in_order():
  stored = {'pca': {'dim': 128, 'whiten': True}, 'seed': 0, 'old': 1}
  given = {'pca': {'dim': 64, 'whiten': True}, 'seed': 0, 'new': 'x'}
  assert provenance.differences(stored, given) == [
    "new: stored None, given 'x'",
    'old: stored 1, given None',
    'pca.dim: stored 128, given 64',
  ]
  assert provenance.differences(given, given) == []


def test_differences_summarise_image_paths():
  stored = {'image_paths': ['a.jpg', 'b.jpg', 'c.jpg']}
  given = {'image_paths': ['a.jpg', 'x.jpg']}
  (line,) = provenance.differences(stored, given)
  assert line == 'image_paths: 3 stored, 2 given, first difference at row 1'
  longer = {'image_paths': ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']}
  (line,) = provenance.differences(stored, longer)
  assert line.endswith('first difference at row 3')


def test_is_whitened():
  assert not provenance.is_whitened({})
  assert not provenance.is_whitened({'whitening_hash': provenance.NO_HASH})
  assert provenance.is_whitened({'whitening_hash': '0123abcd'})


def test_check_stale_names_the_fields_and_the_advice():
  metadata = {'store_hash': 'aaa', 'dim': 16}
  provenance.check_stale('the index', metadata, {'dim': 16}, 'rebuild it')
  with pytest.raises(ValueError) as error:
    provenance.check_stale(
      'the index', metadata, {'store_hash': 'bbb', 'dim': 16}, 'rebuild it'
    )
  message = str(error.value)
  assert message.startswith("the index was built with {'store_hash': 'aaa'}")
  assert message.endswith('rebuild it')
  assert "'dim'" not in message.split(', not ')[0]
