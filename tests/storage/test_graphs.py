"""Tests for regagg_jax.storage.graphs: region graph directories resume
after a kill and refuse damaged files by name."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from regagg_jax.storage import graphs
from regagg_jax.storage import atomic

NUM_SLOTS, SHARD_ROWS, K = 25, 10, 3


def _nearest(start, stop):
  """A deterministic kNN stand-in: slots (stop - start, K) and scores."""
  rows = np.arange(start, stop)[:, None]
  neighbours = ((rows + np.arange(1, K + 1)) % NUM_SLOTS).astype(np.int32)
  return neighbours, (1.0 / (1.0 + neighbours + rows)).astype(np.float32)


def _affinity(neighbours, similarities):
  return neighbours, similarities**3


class _Counting:
  def __init__(self):
    self.starts = []

  def __call__(self, start, stop):
    self.starts.append(start)
    return _nearest(start, stop)


def _build(path, nearest=_nearest, metadata=None):
  return graphs.build_graph(
    str(path),
    nearest,
    _affinity,
    num_slots=NUM_SLOTS,
    shard_rows=SHARD_ROWS,
    metadata=metadata or {'k': K},
  )


def _expected():
  return _affinity(*_nearest(0, NUM_SLOTS))


def test_graph_round_trip_and_metadata(tmp_path):
  neighbours, weights, metadata = _build(tmp_path / 'g')
  want = _expected()
  np.testing.assert_array_equal(neighbours, want[0])
  np.testing.assert_array_equal(weights, want[1])
  assert metadata == {'k': K, 'num_slots': NUM_SLOTS, 'shard_rows': SHARD_ROWS}
  assert sorted(os.listdir(tmp_path / 'g')) == [
    'graph_00000.npz',
    'graph_00001.npz',
    'graph_00002.npz',
    'metadata.json',
  ]
  loaded = graphs.load_graph(str(tmp_path / 'g'), expected={'k': K})
  np.testing.assert_array_equal(loaded[0], neighbours)
  with pytest.raises(ValueError, match='k'):
    graphs.load_graph(str(tmp_path / 'g'), expected={'k': K + 1})


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'swap'])
def test_damaged_graph_shard_is_named_with_the_rebuild(tmp_path, damage):
  _build(tmp_path / 'g')
  first, second = (
    tmp_path / 'g' / 'graph_00000.npz',
    tmp_path / 'g' / ('graph_00001.npz'),
  )
  data = bytearray(first.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  elif damage == 'flip':
    data[len(data) // 3] ^= 0x01
  else:
    data = second.read_bytes()
    second.write_bytes(first.read_bytes())
  first.write_bytes(bytes(data))
  with pytest.raises(
    ValueError,
    match=r'graph_00000.npz is missing or does not match its sha256 in .*'
    r'metadata.json \(a damaged file\); delete .* run the same command',
  ):
    graphs.load_graph(str(tmp_path / 'g'))


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_damaged_graph_metadata_is_named(tmp_path, damage):
  _build(tmp_path / 'g')
  file = tmp_path / 'g' / 'metadata.json'
  data = bytearray(file.read_bytes())
  if damage == 'truncate':
    data = data[: len(data) // 2]
  else:
    data[0] ^= 0xFF
  file.write_bytes(bytes(data))
  with pytest.raises(
    ValueError, match='metadata.json is corrupt .*run the same command again'
  ):
    graphs.load_graph(str(tmp_path / 'g'))


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'half written'])
def test_damaged_knn_shard_of_an_unfinished_graph_is_searched_again(
  tmp_path, damage, caplog
):
  """Stage 1 left by a killed run: kNN shards 0 and 1 written, 1 damaged
  (or a temporary of shard 2 half written): only the damaged and missing
  ones are searched again, and the graph is the uninterrupted one."""
  os.makedirs(tmp_path / 'g')
  for number in (0, 1):
    neighbours, similarities = _nearest(
      number * SHARD_ROWS, (number + 1) * SHARD_ROWS
    )
    np.savez(
      tmp_path / 'g' / f'knn_{number:05d}.npz',
      neighbours=neighbours,
      similarities=similarities,
    )
  file = tmp_path / 'g' / 'knn_00001.npz'
  data = bytearray(file.read_bytes())
  if damage == 'truncate':
    file.write_bytes(bytes(data[: len(data) // 2]))
  elif damage == 'flip':
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
  else:  # a dead process's temporary beside whole shards
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()  # a pid now gone
    name = f'knn_00002.npz.tmp-{socket.gethostname()}-{child.pid}-x'
    (tmp_path / 'g' / name).write_bytes(b'PK')
  nearest = _Counting()
  neighbours, weights, _ = _build(tmp_path / 'g', nearest)
  searched = [20] if damage == 'half written' else [10, 20]
  assert nearest.starts == searched
  if damage != 'half written':
    assert 'searching' in caplog.text and 'knn_00001.npz' in caplog.text
  want = _expected()
  np.testing.assert_array_equal(neighbours, want[0])
  np.testing.assert_array_equal(weights, want[1])
  assert not list((tmp_path / 'g').glob('knn_*'))


def _graph_child(path, kill_at):
  """Builds the graph in a child killed at the write `kill_at`."""
  code = (
    'import sys; from tests.storage import test_graphs as t\n'
    't._build(sys.argv[1])'
  )
  repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  return subprocess.run(
    [sys.executable, '-c', code, str(path)],
    cwd=os.path.abspath(repo),
    env=dict(os.environ, **{atomic.KILL_AT: kill_at}),
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize(
  'kill_at, searched',
  [
    ('knn_00001.npz', [10, 20]),
    ('graph_00002.npz', []),
    ('metadata.json', []),
  ],
)
def test_a_kill_at_each_graph_write_resumes(tmp_path, kill_at, searched):
  killed = _graph_child(tmp_path / 'g', kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert list((tmp_path / 'g').glob(f'{kill_at}.tmp-*'))
  nearest = _Counting()
  neighbours, weights, _ = _build(tmp_path / 'g', nearest)
  assert nearest.starts == searched
  want = _expected()
  np.testing.assert_array_equal(neighbours, want[0])
  np.testing.assert_array_equal(weights, want[1])
  assert not [f for f in os.listdir(tmp_path / 'g') if '.tmp-' in f]
  written = json.loads((tmp_path / 'g' / 'metadata.json').read_text())
  assert len(written['sha256']) == 3
