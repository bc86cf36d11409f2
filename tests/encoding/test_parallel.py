"""Tests of regagg_jax.encoding.parallel: shard partition, mesh placement, processes.

Tests that need several devices or processes run this file as a script in
subprocesses (`python tests/test_parallel.py MODE ...`): four simulated CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=4), and two
jax.distributed processes on localhost (CPU collectives over gloo).
"""

import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from regagg_jax.encoding import parallel

REPO_ROOT = Path(__file__).resolve().parents[2]
_WIDTHS = (4, 8, 8, 16, 16)
_TIMEOUT_S = 60


def _run_script(*args, env=None):
  """Runs this file as a script; returns its last stdout line as JSON."""
  environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
  environment.pop('JAX_PLATFORMS', None)
  result = subprocess.run(
    [sys.executable, __file__, *map(str, args)],
    env=environment,
    capture_output=True,
    text=True,
    timeout=_TIMEOUT_S,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


# --- process_shards --------------------------------------------------------


@pytest.mark.parametrize('num_shards', [0, 1, 5, 7, 12])
@pytest.mark.parametrize('count', [1, 2, 3, 8])
def test_process_shards_partition(num_shards, count):
  parts = [
    parallel.process_shards(
      num_shards, process_index=index, process_count=count
    )
    for index in range(count)
  ]
  flat = [shard for part in parts for shard in part]
  assert sorted(flat) == list(range(num_shards))  # covering and disjoint
  assert len(flat) == len(set(flat))
  sizes = [len(part) for part in parts]
  assert max(sizes) - min(sizes) <= 1  # balanced
  for index, part in enumerate(parts):
    assert part == sorted(part)
    assert all(shard % count == index for shard in part)


def test_process_shards_defaults_to_this_process():
  assert jax.process_count() == 1
  assert parallel.process_shards(5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
  'kwargs, error, match',
  [
    (dict(num_shards=-1), ValueError, 'num_shards'),
    (
      dict(num_shards=4, process_count=0, process_index=0),
      ValueError,
      'process_count',
    ),
    (
      dict(num_shards=4, process_count=2, process_index=2),
      ValueError,
      r'process_index must be in \[0, 2\)',
    ),
    (
      dict(num_shards=4, process_count=2, process_index=-1),
      ValueError,
      'process_index',
    ),
    (dict(num_shards=4.0), TypeError, 'num_shards'),
    (dict(num_shards=True), TypeError, 'num_shards'),
  ],
)
def test_process_shards_rejects_bad_arguments(kwargs, error, match):
  num_shards = kwargs.pop('num_shards')
  with pytest.raises(error, match=match):
    parallel.process_shards(num_shards, **kwargs)


# --- mesh, shard_batch, replicate on one device ------------------------------


def test_make_mesh_defaults_to_local_devices():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ('batch',)
  assert list(mesh.devices) == jax.local_devices()


def test_make_mesh_rejects_bad_arguments():
  device = jax.local_devices()[0]
  with pytest.raises(ValueError, match='at least one device'):
    parallel.make_mesh([])
  with pytest.raises(ValueError, match='distinct'):
    parallel.make_mesh([device, device])
  with pytest.raises(TypeError, match='jax Devices'):
    parallel.make_mesh(['cpu:0'])
  with pytest.raises(ValueError, match='axis'):
    parallel.make_mesh(axis='')


def test_shard_batch_rejects_scalars_and_bad_meshes():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match=r"\['step'\].*scalar"):
    parallel.shard_batch(mesh, {'rgb': np.zeros((2, 3)), 'step': 3})
  with pytest.raises(TypeError, match='jax.sharding.Mesh'):
    parallel.shard_batch(None, np.zeros((2, 3)))
  flat = jax.local_devices()[:1]
  square = jax.sharding.Mesh(np.array(flat).reshape(1, 1), ('a', 'b'))
  with pytest.raises(ValueError, match='1-D'):
    parallel.shard_batch(square, np.zeros((2, 3)))
  with pytest.raises(ValueError, match='1-D'):
    parallel.replicate(square, np.zeros((2, 3)))


def test_replicate_keeps_values():
  mesh = parallel.make_mesh()
  tree = {'kernel': np.arange(6.0).reshape(2, 3), 'none': None}
  placed = parallel.replicate(mesh, tree)
  np.testing.assert_array_equal(placed['kernel'], tree['kernel'])
  assert placed['none'] is None
  assert placed['kernel'].sharding.is_fully_replicated


def test_map_batch_rejects_bad_arguments():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match='one bool per argument'):
    parallel.map_batch(mesh, lambda x: x, batched=())
  with pytest.raises(ValueError, match='one bool per argument'):
    parallel.map_batch(mesh, lambda x: x, batched=(1,))
  with pytest.raises(TypeError, match='callable'):
    parallel.map_batch(mesh, None, batched=(True,))
  with pytest.raises(TypeError, match='jax.sharding.Mesh'):
    parallel.map_batch('mesh', lambda x: x, batched=(True,))


# --- initialize and barrier in one process -----------------------------------


@pytest.mark.parametrize(
  'args, error, match',
  [
    ((None, 0, 0), ValueError, 'num_processes must be >= 1'),
    ((None, 2, 2), ValueError, r'process_id must be in \[0, 2\)'),
    ((None, 2, -1), ValueError, 'process_id must be >= 0'),
    ((None, 2, 1), ValueError, 'coordinator_address'),
    (('localhost', 2, 1), ValueError, 'host:port'),
    (('localhost:port', 2, 1), ValueError, 'host:port'),
    ((':1234', 2, 1), ValueError, 'host:port'),
    (('localhost:70000', 2, 1), ValueError, 'host:port'),
    (('localhost:1234', 2.0, 1), TypeError, 'num_processes'),
  ],
)
def test_initialize_rejects_bad_arguments(args, error, match):
  with pytest.raises(error, match=match):
    parallel.initialize(*args)


def test_single_process_initialize_and_barrier_do_nothing():
  parallel.initialize()
  parallel.initialize('unused:1', 1, 0)
  parallel.barrier('alone')
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1


def test_barrier_rejects_empty_name():
  with pytest.raises(ValueError, match='barrier name'):
    parallel.barrier('')


# --- four simulated devices --------------------------------------------------


def _four_devices():
  """Script mode: placement and sharded == single-device VGG19 + weights."""
  from regagg_jax.features import vgg19  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import weighting  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  sizes = np.array(
    [
      [64, 48],
      [40, 64],
      [64, 64],
      [33, 50],
      [64, 32],
      [48, 48],
      [0, 0],
      [0, 0],
    ],
    np.int32,
  )
  rgb = rng.integers(0, 256, (8, 64, 64, 3), np.uint8)
  cells = np.zeros((8, 4, 4), bool)
  for slot, (height, width) in enumerate(sizes):
    cells[slot, : -(-height // 16), : -(-width // 16)] = True
  batch = {'rgb': rgb, 'sizes': sizes, 'cells': cells}
  placed = parallel.shard_batch(mesh, batch)
  shards = [
    (
      shard.device.id,
      shard.index[0].start,
      shard.index[0].stop,
      bool(np.array_equal(shard.data, rgb[shard.index])),
    )
    for shard in placed['rgb'].addressable_shards
  ]
  try:
    parallel.shard_batch(mesh, {'rgb': rgb[:6]})
    error = None
  except ValueError as caught:
    error = str(caught)
  variables = vgg19.init_params(jax.random.PRNGKey(0), widths=_WIDTHS)

  @jax.jit
  def encode(variables, rgb, sizes, cells):
    features = vgg19.features(variables, vgg19.preprocess(rgb), sizes)
    alpha = jax.vmap(weighting.spatial_weights)(features, cells)  # eq. (1)
    beta = jax.vmap(weighting.channel_weights)(features, cells)  # eq. (2)
    return features, alpha, beta

  single = encode(variables, rgb, sizes, cells)
  sharded = encode(
    parallel.replicate(mesh, variables),
    placed['rgb'],
    placed['sizes'],
    placed['cells'],
  )
  mapped = jax.jit(
    parallel.map_batch(mesh, _iterate_and_rank, batched=(True, False, False))
  )
  scores = rng.uniform(0.0, 10.0, (8, 16)).astype(np.float32)
  placed_scores = parallel.shard_batch(mesh, scores)
  mapped_out = mapped(placed_scores, {'scale': np.float32(2.0)}, None)
  compiled = (
    mapped.lower(placed_scores, {'scale': np.float32(2.0)}, None)
    .compile()
    .as_text()
  )
  return {
    'devices': len(mesh.devices),
    'shards': sorted(shards),
    'error': error,
    'output_devices': [len(a.sharding.device_set) for a in sharded],
    'max_difference': [
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(single, sharded)
    ],
    'max_value': [float(np.max(np.abs(np.asarray(a)))) for a in single],
    'mapped': np.asarray(mapped_out).tolist(),
    'mapped_devices': len(mapped_out.sharding.device_set),
    'mapped_collectives': sum(
      compiled.count(f' {op}')
      for op in (
        'all-reduce',
        'all-gather',
        'all-to-all',
        'collective-permute',
        'reduce-scatter',
      )
    ),
    'scores': scores.tolist(),
  }


def _iterate_and_rank(scores, options, unused):
  """(B, 16) -> (B, 3): a vmapped while_loop with a per-row trip count
  (1 + int(row[0]) % 5 steps of v -> 1.5 v + 1), then top_k."""
  del unused

  def one(row):
    steps = row[0].astype(np.int32) % 5 + 1
    row, _ = jax.lax.while_loop(
      lambda c: c[1] < steps, lambda c: (c[0] * 1.5 + 1.0, c[1] + 1), (row, 0)
    )
    return jax.lax.top_k(row * options['scale'], 3)[0]

  return jax.vmap(one)(scores)


def test_four_devices_shard_and_match_single_device():
  result = _run_script(
    'four_devices',
    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'},
  )
  assert result['devices'] == 4
  # Two rows per device, in order, each holding its own rows of the batch.
  assert [shard[1:] for shard in result['shards']] == [
    [0, 2, True],
    [2, 4, True],
    [4, 6, True],
    [6, 8, True],
  ]
  assert len({shard[0] for shard in result['shards']}) == 4
  assert 'not a multiple of the 4 devices' in result['error']
  assert "['rgb']" in result['error']
  assert result['output_devices'] == [4, 4, 4]  # stayed sharded
  for difference, value in zip(result['max_difference'], result['max_value']):
    assert value > 0
    assert difference <= 1e-5 * value
  # map_batch: each device runs its own rows, no communication, same result.
  assert result['mapped_collectives'] == 0
  assert result['mapped_devices'] == 4
  expected = []
  for row in np.asarray(result['scores'], np.float64):
    for _ in range(int(np.float32(row[0])) % 5 + 1):
      row = row * 1.5 + 1.0
    expected.append(np.sort(row * 2.0)[::-1][:3])
  np.testing.assert_allclose(result['mapped'], expected, rtol=1e-6)


# --- two jax.distributed processes -------------------------------------------


def _distributed(port, process_id, directory, num_shards):
  """Script mode: one of two processes writing its shards, then a barrier."""
  parallel.initialize(f'localhost:{port}', 2, int(process_id))
  directory, num_shards = Path(directory), int(num_shards)
  mine = parallel.process_shards(num_shards)
  if jax.process_index() == 1:
    time.sleep(2.0)  # process 0 must wait at the barrier for these files
  for shard in mine:
    descriptor = os.open(
      directory / f'shard_{shard}.txt', os.O_CREAT | os.O_EXCL | os.O_WRONLY
    )  # exactly once
    os.write(descriptor, str(jax.process_index()).encode())
    os.close(descriptor)
  parallel.barrier('written')
  seen = sorted(int(p.stem.split('_')[1]) for p in directory.glob('shard_*'))
  return {
    'process_index': jax.process_index(),
    'process_count': jax.process_count(),
    'devices': jax.device_count(),
    'shards': mine,
    'seen_after_barrier': seen,
  }


def _free_port():
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    return probe.getsockname()[1]


def test_two_processes_split_shards_and_meet_at_barrier(tmp_path):
  num_shards, port = 7, _free_port()
  environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  environment.pop('XLA_FLAGS', None)
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        __file__,
        'distributed',
        str(port),
        str(index),
        str(tmp_path),
        str(num_shards),
      ],
      env=environment,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(2)
  ]
  results = []
  try:
    for process in processes:
      stdout, stderr = process.communicate(timeout=_TIMEOUT_S)
      assert process.returncode == 0, stderr[-3000:]
      results.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for process in processes:
      process.kill()
  assert [r['process_index'] for r in results] == [0, 1]
  assert all(r['process_count'] == 2 and r['devices'] == 2 for r in results)
  assert results[0]['shards'] == [0, 2, 4, 6]
  assert results[1]['shards'] == [1, 3, 5]
  for result in results:  # the barrier waited for the other's writes
    assert result['seen_after_barrier'] == list(range(num_shards))
  owners = {
    int(p.stem.split('_')[1]): int(p.read_text())
    for p in tmp_path.glob('shard_*.txt')
  }
  assert owners == {shard: shard % 2 for shard in range(num_shards)}


if __name__ == '__main__':
  _MODES = {'four_devices': _four_devices, 'distributed': _distributed}
  print(json.dumps(_MODES[sys.argv[1]](*sys.argv[2:])))
