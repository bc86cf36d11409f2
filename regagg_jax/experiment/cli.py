"""Command line of regagg_jax: one config, one mode; the work is in modes.

  python run.py                                   # the demo (configs/demo.py)
  python run.py --config=configs/oxford5k.py --mode=eval
  python run.py --config=configs/table1_proposed.py:oxford5k,256 --mode=eval
  python run.py --config=configs/default.py --config.pca.dim=256 --mode=fit

Installed (`pip install "regagg_jax[all]"`), `regagg-jax` takes the same
flags from any folder; a --config that is not a file names an installed
config: `regagg-jax --config=folder:/my/photos --mode=eval` (also
`configs/folder.py` or `folder.py`).

Modes (regagg_jax.experiment.modes.MODES): config (print the resolved config),
demo, encode, fit, search, eval. Each configs/*.py docstring gives its exact
commands. Other libraries' INFO lines (orbax, jax's backend probe) are left
out and each log line is printed once, unless --verbosity is given.

Several hosts encode one store together (--mode=encode only): every host
runs the same command on a shared workdir with its own --process_id, e.g.

  python run.py --config=configs/oxford5k.py --mode=encode \\
      --coordinator_address=host0:12345 --num_processes=2 --process_id=0

(regagg_jax.encoding.parallel documents the launch). On CPU backends, the
OpenBLAS threads behind jaxlib's QR / SVD are capped to one at start-up
(batch_encoder.limit_lapack_threads): they fight XLA's threads otherwise.
"""

import importlib.util
import logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax
from ml_collections import config_flags

from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import parallel
from regagg_jax.experiment import modes

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = 'data/samples'
"""eval.root of the bundled photos, relative to a checkout."""


def _data_dir(installed, checkout):
  """regagg_jax/<installed> (a pip install), else <checkout> beside the
  package in a source tree (one with pyproject.toml)."""
  packaged = os.path.join(_PACKAGE, installed)
  if os.path.isdir(packaged):
    return packaged
  root = os.path.dirname(_PACKAGE)
  if os.path.isfile(os.path.join(root, 'pyproject.toml')):
    return os.path.join(root, checkout)
  raise FileNotFoundError(f'no {installed} installed in {_PACKAGE}')


def configs_dir():
  """The configs/*.py folder: the installed copy, else the checkout's."""
  return _data_dir('configs', 'configs')


def resolve_config(value):
  """A --config value: a path that exists as given, else the packaged
  config of that name ('folder', 'folder.py', 'configs/folder.py'), with
  its ':argument'; anything else is left for config_flags to refuse."""
  path, colon, argument = value.partition(':')
  if os.path.exists(path):
    return value
  name = os.path.basename(path)
  packaged = os.path.join(
    configs_dir(), name if name.endswith('.py') else name + '.py'
  )
  return packaged + colon + argument if os.path.isfile(packaged) else value


def _register_configs():
  """Makes `from configs import default` (in every config file) import
  configs_dir(), also where the checkout is not on sys.path."""
  if 'configs' in sys.modules:
    return
  folder = configs_dir()
  spec = importlib.util.spec_from_file_location(
    'configs',
    os.path.join(folder, '__init__.py'),
    submodule_search_locations=[folder],
  )
  sys.modules['configs'] = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sys.modules['configs'])


class QuietLog(logging.Filter):
  """Keeps INFO lines of regagg_jax only (orbax logs ~40 per checkpoint,
  jax one per backend it cannot open) and drops repeats of a line."""

  def __init__(self):
    super().__init__()
    self._seen = set()

  def filter(self, record):
    if record.levelno < logging.WARNING and not record.pathname.startswith(
      _PACKAGE
    ):
      return False
    line = (record.levelno, record.getMessage())
    if line in self._seen:
      return False
    self._seen.add(line)
    return True


def exit_on_unknown_field(error):
  """Exits with one line naming a mistyped config field and the nearest."""
  hint = re.search(r'Did you mean "([^"]+)"', str(error))
  field = re.search(r"'([^'\\]+)", str(error))
  sys.exit(
    f'{os.path.basename(sys.argv[0])}: unknown config field '
    f'{field.group(1) if field else "?"!r}'
    + (f'; did you mean {hint.group(1)!r}?' if hint else '')
    + ' (--mode=config prints every field)'
  )


_register_configs()
try:  # the default config file takes the command line's overrides here
  _CONFIG = config_flags.DEFINE_config_file(
    'config',
    os.path.join(configs_dir(), 'demo.py'),
    'Config file (configs/*.py[:argument], or an installed config by name: '
    'folder, oxford5k, ...); override fields with '
    '--config.<section>.<field>=value.',
  )
except (AttributeError, KeyError) as error:
  exit_on_unknown_field(error)
_MODE = flags.DEFINE_enum('mode', 'demo', sorted(modes.MODES), 'What to run.')
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0 for multi-host encoding (jax.distributed).',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', 1, 'Processes (hosts) encoding one store together.'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', 0, 'This process, 0 <= id < num_processes.'
)


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _NUM_PROCESSES.value > 1 and _MODE.value != 'encode':
    raise app.UsageError(
      f'--num_processes={_NUM_PROCESSES.value} is for '
      f'--mode=encode only, got --mode={_MODE.value}'
    )
  if not flags.FLAGS['verbosity'].present:
    absl_logging.get_absl_handler().addFilter(QuietLog())
  parallel.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  if jax.default_backend() == 'cpu':
    batch_encoder.limit_lapack_threads()
  config = _CONFIG.value
  if config.eval.root == SAMPLES and not os.path.isdir(SAMPLES):
    config.eval.root = _data_dir('samples', SAMPLES)  # outside a checkout
  modes.MODES[_MODE.value](config)


def _parse_flags(argv):
  """absl's parser after resolve_config; a mistyped --config.<field>
  exits with one line."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      argv[i] = '--config=' + resolve_config(arg[len('--config=') :])
    elif arg == '--config' and i + 1 < len(argv):
      argv[i + 1] = resolve_config(argv[i + 1])
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:  # from config_flags overrides
    exit_on_unknown_field(error)


def main():
  """run.py and the regagg-jax console script; --help prints this
  module's docstring."""
  sys.modules['__main__'].__doc__ = __doc__
  app.run(_run, flags_parser=_parse_flags)
