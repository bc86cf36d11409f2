"""VGG19 conv5_4 speed: JAX/Flax versus PyTorch, and JAX on an accelerator.

CPU mode (default) times, in one process on the same converted weights and a
1024x768 (W x H) float32 image, the median of --repeats interleaved runs of
  * vgg19.features (JAX / XLA CPU) on the landscape image as features runs it
    (transposed internally on CPU), as is (transpose=False), and on its
    portrait (768x1024) transpose as is;
  * a plain torch.nn conv stack (Conv2d 3x3 pad 1 + ReLU, MaxPool2d
    ceil_mode=True), NCHW, torch.inference_mode;
and prints the ratio JAX / torch (below 1: JAX faster) and the orientation
ratio. Needs torch (`pip install torch`), not a project dependency.

  python benchmarks/vgg19_speed.py
  python benchmarks/vgg19_speed.py --device  # images/s at batch 1, 8, 32, f32/bf16
"""

import functools
import statistics

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from regagg_jax.features import vgg19
from regagg_jax.features import weights

_DEVICE = flags.DEFINE_bool(
  'device',
  False,
  'Measure images/s on the default '
  'JAX accelerator instead of the CPU comparison.',
)
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per variant.')
_HEIGHT = flags.DEFINE_integer('height', 768, 'Image height H_I.')
_WIDTH = flags.DEFINE_integer('width', 1024, 'Image width W_I.')
_BATCHES = flags.DEFINE_list(
  'batches', ['1', '8', '32'], 'Batch sizes for --device.'
)
_RANDOM = flags.DEFINE_bool(
  'random',
  False,
  'Random weights instead of weights.load_params() (same speed).',
)


def _torch_stack(params, torch):
  """The same network as plain torch modules, weights from `params`."""
  layers = []
  for name in vgg19.LAYER_NAMES:
    if name.endswith('_1') and name != 'conv1_1':
      layers.append(torch.nn.MaxPool2d(2, 2, ceil_mode=True))
    kernel = np.asarray(params[name]['kernel']).transpose(3, 2, 0, 1)
    conv = torch.nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, padding=1)
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel))
    conv.bias.data = torch.from_numpy(np.array(params[name]['bias']))
    layers += [conv, torch.nn.ReLU(inplace=True)]
  return torch.nn.Sequential(*layers).eval()


def compare_cpu(variables) -> None:
  """Prints JAX vs torch CPU times and the orientation measurement."""
  import torch  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (1, _HEIGHT.value, _WIDTH.value, 3), np.uint8)
  landscape = vgg19.preprocess(rgb)
  portrait = jnp.transpose(landscape, (0, 2, 1, 3))
  network = _torch_stack(variables['params'], torch)
  torch_input = torch.from_numpy(
    np.asarray(landscape).transpose(0, 3, 1, 2).copy()
  )

  def run_torch():
    with torch.inference_mode():
      return network(torch_input)

  def run_jax(x, transpose):
    return vgg19.features(variables, x, transpose=transpose).block_until_ready()

  variants = {
    'jax landscape': lambda: run_jax(landscape, None),  # what features does
    'jax as is': lambda: run_jax(landscape, False),
    'jax portrait': lambda: run_jax(portrait, False),
    'torch landscape': run_torch,
  }
  outputs, _, times = timing.interleaved(variants, _REPEATS.value)
  reference = outputs['torch landscape'].numpy().transpose(0, 2, 3, 1)
  difference = np.abs(np.asarray(outputs['jax landscape']) - reference).max()
  medians = {name: statistics.median(values) for name, values in times.items()}
  print(
    f'jax {jax.__version__} ({jax.devices()[0].platform}), torch '
    f'{torch.__version__} ({torch.get_num_threads()} threads), '
    f'{_WIDTH.value}x{_HEIGHT.value} (W x H) float32, batch 1, median of '
    f'{_REPEATS.value}'
  )
  for name, values in times.items():
    print(
      f'  {name:16s} {medians[name]:7.3f} s   runs '
      + ' '.join(f'{value:.3f}' for value in values)
    )
  print(
    f'  max |jax - torch| = {difference:.3g} (max activation '
    f'{reference.max():.3g})'
  )
  print(
    f'ratio jax/torch (landscape) = '
    f'{medians["jax landscape"] / medians["torch landscape"]:.3f}'
  )
  print(
    f'ratio jax portrait/landscape, both as is = '
    f'{medians["jax portrait"] / medians["jax as is"]:.3f}'
  )
  print(
    f'ratio jax transposed/as is (landscape) = '
    f'{medians["jax landscape"] / medians["jax as is"]:.3f}'
  )


def _run_features(variables, x, dtype):
  return vgg19.features(variables, x, dtype=dtype).block_until_ready()


def measure_device(variables) -> None:
  """Prints images/s on the default device per batch size and dtype."""
  variables = jax.device_put(variables)
  print(
    f'device {jax.devices()[0].device_kind}, {_WIDTH.value}x'
    f'{_HEIGHT.value} (W x H), median of {_REPEATS.value}'
  )
  for dtype in (jnp.float32, jnp.bfloat16):
    for batch in map(int, _BATCHES.value):
      x = (
        jax.random.normal(
          jax.random.PRNGKey(0), (batch, _HEIGHT.value, _WIDTH.value, 3)
        )
        * 60.0
      )
      _, _, times = timing.interleaved(
        {'run': functools.partial(_run_features, variables, x, dtype)},
        _REPEATS.value,
      )
      seconds = statistics.median(times['run'])
      print(
        f'  {jnp.dtype(dtype).name:8s} batch {batch:3d}: '
        f'{batch / seconds:8.1f} images/s ({seconds * 1e3:.1f} ms/batch)'
      )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  variables = (
    vgg19.init_params(jax.random.PRNGKey(0))
    if _RANDOM.value
    else weights.load_params()
  )
  if _DEVICE.value:
    measure_device(variables)
  else:
    compare_cpu(variables)


if __name__ == '__main__':
  app.run(main)
