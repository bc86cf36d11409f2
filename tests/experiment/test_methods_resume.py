"""The demo's multi-method encode loses no work (issue 16): it writes every
method's store shard by shard (pipeline.encode_methods with a directory),
and a run that dies in pass 2 resumes there, without pass 1, to the stores
an uninterrupted in-memory run gives."""

import numpy as np
import pytest

from configs import quick
from regagg_jax.encoding import method_encoder
from regagg_jax.experiment import pipeline

_METHODS = ('mac', 'o1', 'o2')


def _config():
  config = quick.get_config()
  config.features.shard_size = 4
  config.features.batch_size = 4
  return config


def _counting(monkeypatch, name, fail_on=None):
  """Counts the rows of method_encoder.<name> calls; raises on call fail_on."""
  original, calls = getattr(method_encoder, name), []

  def counted(variables, image_paths, rows, *args, **kwargs):
    calls.append(list(rows))
    if len(calls) == fail_on:
      raise RuntimeError('injected: killed in pass 2')
    return original(variables, image_paths, rows, *args, **kwargs)

  monkeypatch.setattr(method_encoder, name, counted)
  return calls


def test_a_run_killed_in_pass_2_resumes_without_pass_1(
  sample_paths, tmp_path, monkeypatch
):
  paths = [str(p) for p in sample_paths[:12]]
  config = _config()
  expected = pipeline.encode_methods(config, paths, _METHODS)
  with monkeypatch.context() as patch:
    first = _counting(patch, 'pool_first')
    _counting(patch, 'pool_reduced', fail_on=2)
    with pytest.raises(RuntimeError, match='injected'):
      pipeline.encode_methods(config, paths, _METHODS, directory=tmp_path)
  assert first == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
  first = _counting(monkeypatch, 'pool_first')
  second = _counting(monkeypatch, 'pool_reduced')
  resumed = pipeline.encode_methods(config, paths, _METHODS, directory=tmp_path)
  assert first == []  # pass 1's stores were finished
  assert second == [[4, 5, 6, 7], [8, 9, 10, 11]]  # o2 shard 0 was written
  for method in _METHODS:
    got, want = resumed[method], expected[method]
    np.testing.assert_allclose(
      got.descriptors, want.descriptors, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(got.valid, want.valid)
    np.testing.assert_array_equal(got.masks, want.masks)
    assert got.metadata['rows'] == list(range(12))
    assert got.metadata['config_hash'] == want.metadata['config_hash']
  np.testing.assert_allclose(
    resumed['o2'].reduction.components,
    expected['o2'].reduction.components,
    rtol=1e-5,
    atol=1e-6,
  )
  again = _counting(monkeypatch, 'pool_reduced')
  pipeline.encode_methods(config, paths, _METHODS, directory=tmp_path)
  assert again == []  # finished: nothing encoded again
