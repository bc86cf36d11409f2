"""Tests for configs/: every file and documented command resolves to a valid
config, command-line overrides work, bad arguments are refused."""

import ast
import glob
import os
import re
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from configs import paper
from regagg_jax.experiment import settings
from regagg_jax.aggregation import method_table

# ml_collections' config_flags loads config files with the deprecated
# SourceFileLoader.load_module(); not ours to change.
pytestmark = pytest.mark.filterwarnings(
  r'ignore:the load_module\(\) method is deprecated:DeprecationWarning'
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '*.py')))
COMMAND = re.compile(r'--config=(configs/\w+\.py)(?::(\S+))?')


def _parse(*argv):
  """Parses run.py-style flags with config_flags; returns the config."""
  argv = ['run.py', *argv]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, flag_values=flag_values, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


def _documented_commands():
  for path in CONFIG_FILES:
    with open(path) as stream:
      docstring = ast.get_docstring(ast.parse(stream.read())) or ''
    for match in COMMAND.finditer(docstring):
      yield match.group(1), match.group(2)


DOCUMENTED = sorted(set(_documented_commands()), key=str)


def _check_valid(config):
  assert set(config) >= {
    'features',
    'regions',
    'pooling',
    'pca',
    'search',
    'eval',
    'name',
    'workdir',
  }
  assert config.features.weights in settings.WEIGHTS
  assert config.pooling.method in method_table.POOLING
  assert config.search.query_regions in settings.QUERY_REGIONS
  assert config.regions.backend in ('hesaff', 'jax')
  assert config.features.dtype in ('float32', 'bfloat16')
  assert config.regions.min_cells >= 1
  assert 1 <= config.pca.dim and config.pca.min_vectors_per_dim >= 1
  assert config.pooling.k_prime <= config.features.widths[-1]
  assert config.eval.dataset in (
    'samples',
    'ukbench',
    'oxford5k',
    'paris6k',
    'roxford5k',
    'rparis6k',
    'holidays',
    'folder',
  )
  settings.store_hash(config)  # every section serialises
  settings.fit_hash(config)


def test_every_config_file_documents_a_command():
  documented_files = {file for file, _ in DOCUMENTED}
  for path in CONFIG_FILES:
    name = os.path.basename(path)
    if name in ('__init__.py', 'paper.py'):
      continue
    assert f'configs/{name}' in documented_files, name


@pytest.mark.parametrize('file,arg', DOCUMENTED)
def test_documented_command_resolves(file, arg):
  config = _parse(f'--config={file}' + (f':{arg}' if arg else ''))
  _check_valid(config)


def test_every_table1_and_fig1_cell_has_a_command():
  commands = {(f, a) for f, a in DOCUMENTED}
  rows = {
    'table1_proposed': 'O2_R',
    'table1_spoc': 'spoc',
    'table1_crow': 'crow',
    'table1_rmac': 'rmac',
    'fig1_o1_w': 'O1_W',
    'fig1_o1_r': 'O1_R',
    'fig1_o2_w': 'O2_W',
    'fig1_o2_r': 'O2_R',
  }
  for row, variant in rows.items():
    for dataset in paper.DATASETS:
      for dim in paper.DIMS:
        assert (f'configs/{row}.py', f'{dataset},{dim}') in commands
        config = _parse(f'--config=configs/{row}.py:{dataset},{dim}')
        assert config.pca.dim == dim and not config.search.qe
        assert config.pooling.method == paper.VARIANTS[variant]['method']
        assert config.pooling.regional == paper.VARIANTS[variant]['regional']
        if dataset != 'holidays':
          qe_row = ('configs/table1_proposed_qe.py', f'{dataset},{dim}')
          if row.startswith('fig1'):
            qe_row = (f'configs/{row}.py', f'{dataset},{dim},qe')
          assert qe_row in commands or row in ('table1_spoc', 'table1_rmac')


def test_paper_columns_and_variants():
  oxford = _parse('--config=configs/table1_proposed.py:oxford5k,128')
  full = _parse('--config=configs/table1_proposed.py:oxford5k_full,128')
  holidays = _parse('--config=configs/table1_proposed.py:holidays,512')
  assert oxford.eval.crop_queries and oxford.search.query_regions == 'whole'
  assert not full.eval.crop_queries and full.search.query_regions == 'all'
  assert oxford.workdir == full.workdir  # one database store for both
  assert holidays.features.max_size == 1024 and not holidays.search.qe
  assert oxford.name != full.name
  qe = _parse('--config=configs/table1_crow_qe.py:paris6k,256')
  assert qe.search.qe and qe.search.n_qe == 10 and qe.pooling.method == 'crow'
  assert qe.search.qe_include_query  # average QE, unlike eq. (8)
  assert not oxford.search.qe_include_query


def test_overrides_from_the_command_line():
  config = _parse(
    '--config=configs/default.py',
    '--config.pca.dim=256',
    '--config.search.qe=True',
    '--config.pooling.method=gem',
  )
  assert config.pca.dim == 256 and config.search.qe
  assert config.pooling.method == 'gem'
  with pytest.raises(flags.IllegalFlagValueError):
    _parse('--config=configs/default.py', '--config.pca.dim=many')


@pytest.mark.parametrize(
  'arg,message',
  [
    ('oxford105k,512', 'dataset must be one of'),
    ('oxford5k,100', 'D must be one of'),
    ('oxford5k,512,fast', "can only be 'qe'"),
    ('holidays,512,qe', 'does not apply QE to Holidays'),
  ],
)
def test_bad_paper_arguments_are_refused(arg, message):
  with pytest.raises(ValueError, match=message):
    paper.make_config(arg, variant='O2_R', qe=False)


def test_defaults_follow_the_paper():
  config = _parse('--config=configs/default.py')
  assert (config.regions.n_max, config.regions.n_min) == (4000, 300)
  assert config.regions.num_clusters == 3 and config.pooling.k_prime == 128
  assert config.pca.dim == 512 and config.search.n_qe == 10
  assert config.features.weights == 'imagenet'
  assert config.pooling.method == 'o2' and config.pooling.regional


def test_run_help():
  done = subprocess.run(
    [sys.executable, 'run.py', '--help'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode in (0, 1), done.stderr  # absl's --help exits with 1
  assert 'python run.py' in done.stdout  # the module docstring (usage)
  assert '--mode' in done.stdout and 'demo' in done.stdout
  assert '--config' in done.stdout


def test_config_mode_prints_the_resolved_config():
  done = subprocess.run(
    [
      sys.executable,
      'run.py',
      '--config=configs/folder.py',
      '--config.pca.dim=64',
      '--mode=config',
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'dim: 64' in done.stdout and 'min_vectors_per_dim: 16' in done.stdout
  assert 'dataset: folder' in done.stdout


def test_mistyped_config_field_gives_one_line_with_the_nearest_field():
  done = subprocess.run(
    [sys.executable, 'run.py', '--config.pca.dims=16', '--mode=config'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 1
  lines = [line for line in done.stderr.splitlines() if 'run.py' in line]
  assert lines == [
    "run.py: unknown config field 'dims'; did you mean 'dim'? "
    '(--mode=config prints every field)'
  ]
  assert 'Traceback' not in done.stderr
