"""The benchmarks: every script imports; the device report runs end to end
(on the CPU, at tiny sizes)."""

import json
import os
import subprocess
import sys

import pytest

from tests import conftest


@pytest.mark.slow
def test_device_report_smoke_writes_every_section(tmp_path):
  report_path = tmp_path / 'device.json'
  subprocess.run(
    [
      sys.executable,
      'benchmarks/device_report.py',
      '--smoke',
      '--height=64',
      '--width=96',
      '--batches=2',
      '--repeats=1',
      '--pipeline_images=4',
      '--mix_images=6',
      '--commit=test',
      f'--json={report_path}',
    ],
    cwd=conftest.REPO_ROOT,
    env={**os.environ, 'PYTHONPATH': str(conftest.REPO_ROOT)},
    check=True,
    capture_output=True,
  )
  report = json.loads(report_path.read_text())
  assert report['sections_done'] == [
    'pairs',
    'stages',
    'agreement',
    'host_pipeline',
    'mix',
    'small_batches',
  ]
  assert report['commit'] == 'test' and report['smoke'] is True
  assert {(p['dtype'], p['log_method']) for p in report['pairs']} == {
    ('float32', 'qr'),
    ('bfloat16', 'qr'),
    ('float32', 'eigh'),
    ('bfloat16', 'eigh'),
  }
  for pair in report['pairs']:
    assert pair['batch'] == 2
    assert pair['bare_images_per_s'] > 0 and pair['full_images_per_s'] > 0
  assert set(report['stages']) == {'qr', 'eigh'}
  assert {'vgg19', 'masks', 'pool o2'} <= set(report['stages']['qr'])
  for log_method in ('qr', 'eigh'):
    agreement = report['agreement'][log_method]  # the CPU against itself
    assert agreement['valid_slots_identical']
    assert agreement['differing_mask_cells'] == 0
    assert agreement['regions'] > 0
    assert agreement['descriptor_relative_error']['max'] == 0.0
  accuracy = report['agreement']['eq5_vs_float64']
  assert accuracy['qr']['count'] > 0 and accuracy['qr']['max'] < 2e-5
  assert accuracy['eigh']['max'] < 1e-2
  assert set(report['host_pipeline']) == {'qr', 'eigh'}
  assert report['mix']['compilations'] == report['mix']['shape_buckets']
  assert report['small_batches'] == []


def test_every_benchmark_imports_with_the_package_layout():
  # Each in its own interpreter (their absl flags share names), all at once.
  names = sorted(
    path.stem for path in (conftest.REPO_ROOT / 'benchmarks').glob('*.py')
  )
  assert 'rerank_scale' in names and 'search_scale' in names
  env = {**os.environ, 'PYTHONPATH': str(conftest.REPO_ROOT)}
  runs = {
    name: subprocess.Popen(
      [sys.executable, '-c', f'import benchmarks.{name}'],
      cwd=conftest.REPO_ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for name in names
  }
  failed = {
    name: run.communicate()[0][-2000:]
    for name, run in runs.items()
    if run.wait() != 0
  }
  assert not failed, failed
