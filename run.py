"""Command line of regagg_jax: one config, one mode; the work is in modes.

  python run.py                                   # the demo (configs/demo.py)
  python run.py --config=configs/oxford5k.py --mode=eval
  python run.py --config=configs/table1_proposed.py:oxford5k,256 --mode=eval
  python run.py --config=configs/default.py --config.pca.dim=256 --mode=fit

Modes (regagg_jax.experiment.modes.MODES): config (print the resolved config),
demo, encode, fit, search, eval. Each
configs/*.py docstring gives its exact commands.

Several hosts encode one store together (--mode=encode only): every host
runs the same command on a shared workdir with its own --process_id, e.g.

  python run.py --config=configs/oxford5k.py --mode=encode \\
      --coordinator_address=host0:12345 --num_processes=2 --process_id=0

(regagg_jax.encoding.parallel documents the launch). On CPU backends, the
OpenBLAS threads behind jaxlib's QR / SVD are capped to one at start-up
(batch_encoder.limit_lapack_threads): they fight XLA's threads otherwise.
"""

import os
import re
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from regagg_jax.encoding import batch_encoder
from regagg_jax.experiment import modes
from regagg_jax.encoding import parallel


def exit_on_unknown_field(error):
  """Exits with one line naming a mistyped config field and the nearest."""
  hint = re.search(r'Did you mean "([^"]+)"', str(error))
  field = re.search(r"'([^'\\]+)", str(error))
  sys.exit(
    f'run.py: unknown config field {field.group(1) if field else "?"!r}'
    + (f'; did you mean {hint.group(1)!r}?' if hint else '')
    + ' (--mode=config prints every field)'
  )


try:  # the default config file takes the command line's overrides here
  _CONFIG = config_flags.DEFINE_config_file(
    'config',
    os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'configs', 'demo.py'
    ),
    'Config file (configs/*.py[:argument]); override fields with '
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _NUM_PROCESSES.value > 1 and _MODE.value != 'encode':
    raise app.UsageError(
      f'--num_processes={_NUM_PROCESSES.value} is for '
      f'--mode=encode only, got --mode={_MODE.value}'
    )
  parallel.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  if jax.default_backend() == 'cpu':
    batch_encoder.limit_lapack_threads()
  modes.MODES[_MODE.value](_CONFIG.value)


def parse_flags(argv):
  """absl's parser; a mistyped --config.<field> exits with one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:  # from config_flags overrides
    exit_on_unknown_field(error)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
