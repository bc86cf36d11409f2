"""Two runs encoding the same store in one workdir never interleave.

Both `run.py --mode=encode` runs start while the test holds the store's
lock (storage.locks, <workdir>/locks/<store>.lock), so both must wait for
it, each saying so; once it is released one encodes the store and the
other reuses it: every shard is encoded once, U^1 fitted once, and the
store equals a single run's.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from regagg_jax.storage import locks
from regagg_jax.storage import store_reader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _encode(photos, workdir, log):
  """Starts run.py --mode=encode (quick config, shards of 2); output to log."""
  return subprocess.Popen(
    [
      sys.executable,
      'run.py',
      '--config=configs/quick.py',
      '--mode=encode',
      '--config.eval.dataset=folder',
      f'--config.eval.root={photos}',
      f'--config.workdir={workdir}',
      '--config.features.shard_size=2',
    ],
    cwd=REPO_ROOT,
    stdout=log,
    stderr=subprocess.STDOUT,
  )


def _wait_for(process, log, text, *, timeout=300):
  deadline = time.monotonic() + timeout
  while text not in log.read_text():
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      pytest.fail(f'no {text!r} in:\n{log.read_text()[-3000:]}')
    time.sleep(0.1)


@pytest.mark.slow
def test_two_runs_on_one_store_encode_each_shard_once(tmp_path, sample_paths):
  photos = tmp_path / 'photos'
  photos.mkdir()
  for path in sample_paths[:6]:
    shutil.copy(path, photos / path.name)
  with open(tmp_path / 'alone.txt', 'w') as log:
    alone = _encode(photos, tmp_path / 'alone', log)
    assert alone.wait(timeout=300) == 0, (tmp_path / 'alone.txt').read_text()
  (store,) = (tmp_path / 'alone' / 'stores').iterdir()
  lock = tmp_path / 'work' / 'locks' / f'{store.name}.lock'

  logs = [tmp_path / 'first.txt', tmp_path / 'second.txt']
  with locks.hold(lock):  # both runs start while the store is locked
    streams = [open(log, 'w') for log in logs]
    runs = [_encode(photos, tmp_path / 'work', s) for s in streams]
    for run, log in zip(runs, logs):
      _wait_for(run, log, f'waiting for {lock} (held by pid {os.getpid()}')
  for run, stream, log in zip(runs, streams, logs):
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    stream.close()
  outputs = [log.read_text() for log in logs]
  encoded = [
    int(n)
    for text in outputs
    for n in re.findall(r'encoding shard (\d+)', text)
  ]
  assert sorted(encoded) == [0, 1, 2]  # each shard once, by one run
  assert sum('fitting U^1' in text for text in outputs) == 1
  assert sum('reusing' in text for text in outputs) == 1
  got = store_reader.load_store(tmp_path / 'work' / 'stores' / store.name)
  want = store_reader.load_store(store)
  for name in ('descriptors', 'valid', 'masks', 'grid'):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
  assert got.image_paths == want.image_paths
  assert got.metadata == want.metadata
