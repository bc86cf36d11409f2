"""An encode killed mid-way resumes to the store an uninterrupted run makes.

The test runs this file as a child process (see `_encode`): a real encode
(file_encoder.encode_rows, 'o2' with a fixed U^1, tiny random VGG19, jax
region backend) of 24 sample images at 96 px into a
store_writer.build_store store of shards of 4 images.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from regagg_jax.aggregation import method_table
from regagg_jax.regions import proposal
from regagg_jax.storage import records
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES, SHARD_SIZE = 24, 4
NUM_SHARDS = NUM_IMAGES // SHARD_SIZE


def _encode(pause, targets):
  """Child: build_store into each (store, log) of `targets` in turn; every
  encode_part call appends its rows to that log (one JSON line) and then
  waits `pause` seconds (time for the test to kill it between shards)."""
  import jax  # pylint: disable=g-import-not-at-top
  from regagg_jax.encoding import file_encoder  # pylint: disable=g-import-not-at-top
  from regagg_jax.aggregation import pca  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import vgg19  # pylint: disable=g-import-not-at-top

  samples = os.path.join(REPO_ROOT, 'data', 'samples')
  paths = [
    os.path.join(samples, n)
    for n in sorted(os.listdir(samples))
    if n.endswith('.jpg')
  ][:NUM_IMAGES]
  variables = vgg19.init_params(jax.random.PRNGKey(0), widths=(4, 8, 8, 16, 16))
  components = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 4)))[
    0
  ].astype(np.float32)
  reduction = pca.PCAParams(
    np.zeros(16, np.float32), components, np.ones(4, np.float32)
  )  # a fixed U^1 (eq. 4)
  options = {
    'region_options': proposal.RegionOptions(
      backend='jax', n_max=30, n_min=10, num_clusters=3, min_cells=1
    ),
    'pooling_options': method_table.PoolingOptions(),
  }
  header = {
    'config_hash': records.hash_config(options),
    'apply_exif': True,
    'whitening_hash': 'none',
    'inputs_hash': records.hash_config([str(p) for p in paths]),
  }
  for store, log in targets:

    def encode_part(rows, log=log):
      with open(log, 'a') as stream:
        stream.write(json.dumps(rows) + '\n')
      part = file_encoder.encode_rows(
        variables,
        paths,
        rows,
        'o2',
        reduction=reduction,
        max_size=96,
        batch_size=SHARD_SIZE,
        num_threads=2,
        prefetch=1,
        **options,
      )
      time.sleep(pause)
      return part

    store_writer.build_store(
      store,
      encode_part,
      image_paths=paths,
      header=header,
      shard_size=SHARD_SIZE,
      reduction=reduction,
    )


def _start(tmp_path, pause, *targets):
  """Starts the child on (store, log), ...; its output goes to a file."""
  output = open(tmp_path / f'child-{time.monotonic_ns()}.txt', 'w')
  child = subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), str(pause)]
    + [str(p) for target in targets for p in target],
    cwd=REPO_ROOT,
    stdout=output,
    stderr=subprocess.STDOUT,
    env=dict(
      os.environ,
      PYTHONPATH=REPO_ROOT,  # the second child reuses
      JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax-cache'),  # the
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    ),
  )  # first's jit
  return child, output.name


def _shards(store):
  """{shard file: (inode, mtime, size)} of the finished shards."""
  if not os.path.isdir(store):
    return {}
  return {
    f: (s.st_ino, s.st_mtime_ns, s.st_size)
    for f in os.listdir(store)
    if f.startswith('shard_') and f.endswith('.npz')
    for s in [os.stat(os.path.join(store, f))]
  }


def _logged_shards(log):
  with open(log) as stream:
    return [json.loads(line)[0] // SHARD_SIZE for line in stream]


@pytest.mark.slow
def test_killed_encode_resumes_without_recomputing(tmp_path):
  store, reference = tmp_path / 'store', tmp_path / 'reference'
  logs = [
    tmp_path / 'killed.log',
    tmp_path / 'resumed.log',
    tmp_path / 'reference.log',
  ]
  child, output = _start(tmp_path, 0.5, (store, logs[0]))
  deadline = time.monotonic() + 400  # compiling takes long on a busy CPU
  while len(_shards(store)) < 2:
    if child.poll() is not None or time.monotonic() > deadline:
      child.kill()
      with open(output) as stream:
        pytest.fail(
          f'the encode ended early ({child.returncode}):\n'
          f'{stream.read()[-3000:]}'
        )
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  finished = _shards(store)
  assert 2 <= len(finished) < NUM_SHARDS
  with pytest.raises(
    ValueError,
    match=f'unfinished store: '
    f'{NUM_SHARDS - len(finished)} of {NUM_SHARDS} shards '
    'missing',
  ):
    store_reader.load_store(store)

  child, output = _start(tmp_path, 0, (store, logs[1]), (reference, logs[2]))
  with open(output) as stream:
    assert child.wait(timeout=400) == 0, stream.read()[-3000:]
  done = {int(f[6:11]) for f in finished}
  # (a) finished shards kept as they were, only the others encoded again.
  assert sorted(_logged_shards(logs[1])) == sorted(
    set(range(NUM_SHARDS)) - done
  )
  assert {f: _shards(store)[f] for f in finished} == finished
  assert _logged_shards(logs[2]) == list(range(NUM_SHARDS))
  assert not [f for f in os.listdir(store) if '.tmp-' in f]
  # (b) the resumed store is the uninterrupted one, exactly.
  resumed = store_reader.load_store(store)
  expected = store_reader.load_store(reference)
  for name in ('descriptors', 'valid', 'masks', 'grid'):
    np.testing.assert_array_equal(
      getattr(resumed, name), getattr(expected, name), err_msg=name
    )
  assert resumed.descriptors.shape == (NUM_IMAGES, 8, 4 * 5 // 2)
  assert resumed.valid[:, -1].all()
  assert resumed.image_paths == expected.image_paths
  assert resumed.metadata == expected.metadata
  assert resumed.metadata['rows'] == list(range(NUM_IMAGES))
  for got, want in zip(resumed.reduction, expected.reduction):
    np.testing.assert_array_equal(got, want)


if __name__ == '__main__':
  _encode(float(sys.argv[1]), list(zip(sys.argv[2::2], sys.argv[3::2])))
