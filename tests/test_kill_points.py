"""A run SIGKILLed at each atomic write, then run again, ends as if never
killed.

One `run.py --mode=search` (quick config, 8 sample photos, shards of 3, a
flat FAISS index, diffusion's region graph in 2 shards) writes every kind
of file: U^1, the store header, each shard, the store metadata, the
whitening fit, the index, the graph's kNN and graph shards and metadata,
and the results. For each write point, atomic.KILL_AT kills the run
while that file's temporary is written and not yet renamed; the same
command then runs again. Its stores, fit, index, graph and results equal
an uninterrupted run's, finished shards are not encoded again, and no
temporary file is left in the workdir.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from regagg_jax.search import region_index
from regagg_jax.storage import graphs
from regagg_jax.storage import atomic
from regagg_jax.storage import records
from regagg_jax.storage import store_reader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SHARDS = 3  # 8 photos in shards of 3

# (KILL_AT rule, shards finished before the kill)
WRITE_POINTS = [
  ('reduction.npz', 0),
  ('header.json', 0),
  ('shard_00000.npz', 0),
  ('shard_00001.npz', 1),
  ('shard_00002.npz', 2),
  ('metadata.json', 3),  # the store's (the first metadata.json)
  ('photos-*:1', 3),  # the fit directory (the index's is named later)
  ('*-flat-*', 3),  # the index directory
  ('knn_00001.npz', 3),
  ('graph_00000.npz', 3),
  ('metadata.json:2', 3),  # the graph's
  ('search-quick-*.csv', 3),
  ('search-quick-*.json', 3),
]


@pytest.fixture(scope='module')
def photos(tmp_path_factory, sample_paths):
  folder = tmp_path_factory.mktemp('kill') / 'photos'
  folder.mkdir()
  for path in sample_paths[:8]:
    shutil.copy(path, folder / path.name)
  return folder


def _search(workdir, photos, cache, kill_at=None):
  """run.py --mode=search into workdir (KILL_AT=kill_at when given)."""
  environment = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  environment.pop(atomic.KILL_AT, None)
  if kill_at:
    environment[atomic.KILL_AT] = kill_at
  return subprocess.run(
    [
      sys.executable,
      'run.py',
      '--config=configs/quick.py',
      '--mode=search',
      '--config.eval.dataset=folder',
      f'--config.eval.root={photos}',
      f'--config.workdir={workdir}',
      '--config.features.shard_size=3',
      f'--config.search.queries={photos / "ukbench00000.jpg"}',
      '--config.search.index=flat',
      '--config.search.rerank=diffusion',
      '--config.search.diffusion.k=5',
      '--config.search.diffusion.query_neighbours=5',
      '--config.search.diffusion.shard_rows=40',
    ],
    cwd=REPO_ROOT,
    env=environment,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope='module')
def reference(tmp_path_factory, photos):
  """An uninterrupted run's workdir (and the shared compilation cache)."""
  root = tmp_path_factory.mktemp('reference')
  done = _search(root / 'work', photos, root / 'jax-cache')
  assert done.returncode == 0, done.stderr[-3000:]
  assert _encoded_shards(done.stderr) == list(range(NUM_SHARDS))
  return root / 'work', root / 'jax-cache'


def _encoded_shards(log):
  return [int(n) for n in re.findall(r'encoding shard (\d+) of', log)]


def _only(workdir, folder):
  (path,) = (workdir / folder).iterdir()
  return path


def _temporaries(workdir):
  return [
    os.path.join(root, name)
    for root, folders, files in os.walk(workdir)
    for name in folders + files
    if '.tmp-' in name or '.old-' in name
  ]


def _assert_same_outputs(workdir, expected):
  """The stores, fit, index, graph and results of two workdirs agree."""
  got = store_reader.load_store(_only(workdir, 'stores'))
  want = store_reader.load_store(_only(expected, 'stores'))
  for name in ('descriptors', 'valid', 'masks', 'grid'):
    np.testing.assert_array_equal(
      getattr(got, name), getattr(want, name), err_msg=name
    )
  assert got.image_paths == want.image_paths
  assert got.metadata == want.metadata
  for a, b in zip(got.reduction, want.reduction):
    np.testing.assert_array_equal(a, b)
  got_fit = records.load_fit(_only(workdir, 'fits'))
  want_fit = records.load_fit(_only(expected, 'fits'))
  assert got_fit.metadata == want_fit.metadata
  for a, b in zip(got_fit.whitening, want_fit.whitening):
    np.testing.assert_array_equal(a, b)
  got_index = region_index.load(_only(workdir, 'indexes'))
  want_index = region_index.load(_only(expected, 'indexes'))
  assert got_index.metadata == want_index.metadata
  np.testing.assert_array_equal(got_index.image_ids, want_index.image_ids)
  np.testing.assert_array_equal(
    got_index.index.reconstruct_n(0, got_index.index.ntotal),
    want_index.index.reconstruct_n(0, want_index.index.ntotal),
  )
  got_graph = graphs.load_graph(_only(workdir, 'graphs'))
  want_graph = graphs.load_graph(_only(expected, 'graphs'))
  np.testing.assert_array_equal(got_graph[0], want_graph[0])
  np.testing.assert_array_equal(got_graph[1], want_graph[1])
  assert got_graph[2] == want_graph[2]
  results = sorted((workdir / 'results').glob('search-*.json'))[-1]
  (wanted,) = (expected / 'results').glob('search-*.json')
  assert (
    json.loads(results.read_text())['queries']
    == json.loads(wanted.read_text())['queries']
  )


@pytest.mark.slow
@pytest.mark.parametrize('kill_at, finished', WRITE_POINTS)
def test_a_kill_at_each_write_point_resumes_exactly(
  tmp_path, photos, reference, kill_at, finished
):
  expected, cache = reference
  workdir = tmp_path / 'work'
  killed = _search(workdir, photos, cache, kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  pattern = kill_at.split(':')[0]
  assert list(workdir.glob(f'**/{pattern}.tmp-*')), 'killed elsewhere'
  done = sorted(p.name for p in workdir.glob('stores/*/shard_*.npz'))
  assert done == [f'shard_{n:05d}.npz' for n in range(finished)]

  rerun = _search(workdir, photos, cache)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert _encoded_shards(rerun.stderr) == list(range(finished, NUM_SHARDS))
  assert _temporaries(workdir) == []
  _assert_same_outputs(workdir, expected)
