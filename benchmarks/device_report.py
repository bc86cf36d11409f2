"""The accelerator report: every encoder figure of one device, in one JSON file.

One command on a GPU / TPU host that has the repository and a float16 copy of
the weights (made here with encode_throughput.py --export_weights, 40 MB; the
host needs no network and no cached checkpoint):

  PYTHONPATH=. python3 benchmarks/device_report.py \
      --weights=weights/.vgg19_float16.npz --json=device-<date>.json

benchmarks/device_run.sh wraps both steps. The sections, in this order (the
JSON is rewritten after each, so a run cut short keeps what finished):

  pairs          images/s of the bare VGG19 forward and of the whole encoder
                 (encode_throughput.measure_pair) for each --log_methods x
                 float32 / bfloat16 at the largest of --batches;
  stages         milliseconds per stage, each its own jit, float32, largest
                 batch, per log method (encode_throughput.measure_stages);
  agreement      the device against the CPU on the same batch of --agree_batch
                 --height x --width images: region masks and valid slots
                 (identical is the target), eq. 5 descriptors (relative error
                 per region; target <= 1e-3 for 'qr'), and eq. 5 itself on the
                 device against a float64 numpy logm written here (relative
                 Frobenius error; target <= 2e-5);
  host_pipeline  encode_rows with real JPEG decoding and prefetch against
                 encode_batch alone, bfloat16, largest batch, per log method;
  mix            an Oxford-like mix of shapes through encode_rows with the
                 real network: compilations, shape buckets, images/s;
  small_batches  the pairs at the other --batches.

--smoke runs every section on the CPU at the sizes given (tests/benchmarks
runs it at 64 x 96 with tiny random VGG19 widths): it checks the script, not
the figures.
"""

import datetime
import json
import os
import pathlib
import subprocess

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import encode_throughput as throughput
from regagg_jax.aggregation import pooling
from regagg_jax.encoding import batch_encoder
from regagg_jax.features import vgg19
from regagg_jax.features import weighting

_JSON = flags.DEFINE_string(
  'json', None, 'Write the report here (default: benchmarks/results/).'
)
_LOG_METHODS = flags.DEFINE_list(
  'log_methods', list(pooling.LOG_METHODS), 'eq. (5) solvers to measure.'
)
_AGREE_BATCH = flags.DEFINE_integer(
  'agree_batch', 2, 'Images in the device-vs-CPU check.'
)
_COMMIT = flags.DEFINE_string(
  'commit', None, 'Commit measured (default: git rev-parse HEAD).'
)
_SMOKE = flags.DEFINE_bool(
  'smoke', False, 'Run on the CPU with tiny random VGG19 widths.'
)
_ALLOW_CPU = flags.DEFINE_bool(
  'allow_cpu',
  False,
  'Run on a CPU with the real weights (eq. 5 accuracy figures; the '
  'agreement is then the CPU against itself).',
)
_SECTIONS = ('pairs', 'stages', 'agreement', 'host_pipeline', 'mix')
_ONLY = flags.DEFINE_list(
  'sections', list(_SECTIONS) + ['small_batches'], 'Sections to run.'
)

_DTYPES = ('float32', 'bfloat16')
_RESULTS = pathlib.Path(__file__).resolve().parent / 'results'


def _commit():
  """(commit, whether the tree had uncommitted changes) of the measured code."""
  if _COMMIT.value:
    return _COMMIT.value, None
  try:
    head = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      capture_output=True,
      text=True,
      check=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    return 'unknown', None
  return head, bool(status.strip())


def _write(report, path):
  """Writes the report atomically (a cut-short run leaves the last section)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + '.partial')
  partial.write_text(json.dumps(report, indent=1, sort_keys=True) + '\n')
  os.replace(partial, path)


def _relative_errors(values, references):
  """float64 (N,) ||values_n - references_n|| / ||references_n|| per row."""
  values = np.asarray(values, np.float64).reshape(len(values), -1)
  references = np.asarray(references, np.float64).reshape(len(values), -1)
  norms = np.linalg.norm(references, axis=1)
  return np.linalg.norm(values - references, axis=1) / np.where(
    norms > 0, norms, 1.0
  )


def _summary(errors):
  errors = np.asarray(errors, np.float64)
  if errors.size == 0:
    return {'count': 0}
  return {
    'count': int(errors.size),
    'median': float(np.median(errors)),
    'max': float(np.max(errors)),
  }


def reference_log_covariances(local, weights, *, eps_rel=1e-3):
  """float64 numpy eq. (5): log(G_m + eps_rel tr(G_m) / K' I) per region.

  G_m = sum_p w_mp f~_p f~_p^T / sum_p w_mp, with the log through a float64
  eigendecomposition (G is symmetric positive definite once regularised).

  Args:
    local: (H, W, K') reduced local descriptors f~_p (eq. 4).
    weights: (M, H, W) non-negative cell weights.
    eps_rel: regularisation relative to tr(G) / K'.

  Returns:
    float64 (M, K', K') matrix logs (zero for regions of zero mass).
  """
  local = np.asarray(local, np.float64).reshape(-1, local.shape[-1])
  weights = np.asarray(weights, np.float64).reshape(len(weights), -1)
  reduced_dim = local.shape[-1]
  logs = np.zeros((len(weights), reduced_dim, reduced_dim))
  for m, row in enumerate(weights):
    if row.sum() <= 0:
      continue
    moment = (local * row[:, None]).T @ local / row.sum()
    trace = np.trace(moment)
    if trace <= 0:
      continue
    values, vectors = np.linalg.eigh(
      moment + eps_rel * trace / reduced_dim * np.eye(reduced_dim)
    )
    logs[m] = (vectors * np.log(values)) @ vectors.T
  return logs


def _encode(variables, batch, reduction, dtype, log_method, device):
  """encode_batch (unwhitened) with every input committed to `device`."""
  rgb, sizes, cells = jax.device_put(batch, device)
  with jax.default_device(device):
    descriptors, valid, masks = batch_encoder.encode_batch(
      jax.device_put(variables, device),
      rgb,
      sizes,
      cells,
      jax.device_put(reduction, device),
      None,
      method='o2',
      dtype=dtype,
      region_options=throughput._REGIONS,
      pooling_options=throughput._pooling(log_method),
    )
    return jax.device_get((descriptors, valid, masks))


def measure_agreement(variables, projections, log_methods):
  """The device against the CPU on one batch, and eq. (5) against float64."""
  accelerator, cpu = jax.devices()[0], jax.devices('cpu')[0]
  batch = throughput._padded(
    throughput._pictures(
      _AGREE_BATCH.value, throughput._HEIGHT.value, throughput._WIDTH.value
    )
  )
  reduction = projections[0]
  report = {'batch': _AGREE_BATCH.value, 'device': str(accelerator)}
  for log_method in log_methods:
    device = _encode(
      variables, batch, reduction, 'float32', log_method, accelerator
    )
    host = _encode(variables, batch, reduction, 'float32', log_method, cpu)
    same_masks = np.all(device[2] == host[2], axis=(2, 3)) & (
      device[1] == host[1]
    )
    compared = same_masks & host[1]
    errors = _relative_errors(device[0][compared], host[0][compared])
    report[log_method] = {
      'valid_slots_identical': bool(np.array_equal(device[1], host[1])),
      'regions': int(host[1].sum()),
      'regions_with_identical_masks': int((same_masks & host[1]).sum()),
      'differing_mask_cells': int(np.sum(device[2] != host[2])),
      'descriptor_relative_error': _summary(errors),
    }
    print(f'  agreement {log_method}: {report[log_method]}')
  report['eq5_vs_float64'] = _measure_log_accuracy(
    variables, batch, reduction, host[2] & host[1][..., None, None], log_methods
  )
  return report


def _measure_log_accuracy(variables, batch, reduction, masks, log_methods):
  """Relative Frobenius error of eq. (5) on the device vs float64 numpy."""
  rgb, sizes, cells = batch
  features = jax.jit(lambda v, x, s: vgg19.features(v, vgg19.preprocess(x), s))(
    variables, rgb, sizes
  )
  alpha = jax.vmap(weighting.spatial_weights)(features, cells)  # eq. (1)
  beta = jax.vmap(weighting.channel_weights)(features, cells)  # eq. (2)
  local = (features * beta[:, None, None, :]) @ reduction.components  # eq. 4
  weights = (masks & cells[:, None]) * alpha[:, None]
  report = {}
  for log_method in log_methods:
    logs = jax.jit(
      jax.vmap(
        lambda f, w, m=log_method: pooling.compute_log_covariances(
          f, w, method=m
        )
      )
    )(local, weights)
    errors = []
    for image in range(len(rgb)):
      keep = np.asarray(weights[image]).sum(axis=(1, 2)) > 0
      reference = reference_log_covariances(local[image], weights[image])
      errors.append(
        _relative_errors(np.asarray(logs[image])[keep], reference[keep])
      )
    report[log_method] = _summary(np.concatenate(errors))
    print(f'  eq. 5 vs float64 logm, {log_method}: {report[log_method]}')
  return report


def _variables():
  if _SMOKE.value:
    return vgg19.init_params(
      jax.random.PRNGKey(0), widths=throughput._TINY_WIDTHS
    )
  return jax.device_put(throughput._load_weights())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _SMOKE.value:
    jax.config.update('jax_platforms', 'cpu')
  elif jax.default_backend() == 'cpu' and not _ALLOW_CPU.value:
    raise app.UsageError(
      f'needs a GPU or TPU, but JAX {jax.__version__} sees only '
      f'{jax.devices()} (--smoke checks the script on a CPU)'
    )
  unknown = set(_ONLY.value) - set(_SECTIONS) - {'small_batches'}
  if unknown:
    raise app.UsageError(f'--sections: unknown {sorted(unknown)}')
  for log_method in _LOG_METHODS.value:
    if log_method not in pooling.LOG_METHODS:
      raise app.UsageError(f'--log_methods: unknown {log_method!r}')
  date = datetime.date.today().isoformat()
  path = pathlib.Path(_JSON.value or _RESULTS / f'device-{date}.json')
  commit, dirty = _commit()
  variables = _variables()
  channels = variables['params']['conv5_4']['kernel'].shape[-1]
  k_prime = min(throughput._K_PRIME, channels)
  projections = throughput._projections(
    channels,
    k_prime=k_prime,
    dim=min(throughput._DIM, k_prime * (k_prime + 1) // 2),
  )
  batches = sorted(map(int, throughput._BATCHES.value), reverse=True)
  report = {
    'date': date,
    'commit': commit,
    'uncommitted_changes': dirty,
    'device': jax.devices()[0].device_kind,
    'platform': jax.default_backend(),
    'jax': jax.__version__,
    'smoke': _SMOKE.value,
    'image': {
      'height': throughput._HEIGHT.value,
      'width': throughput._WIDTH.value,
    },
    'encoder': {
      'method': 'o2',
      'k_prime': k_prime,
      'dim': projections[1].components.shape[-1],
      'regions': throughput._REGIONS,
    },
    'repeats': throughput._REPEATS.value,
    'sections_done': [],
  }

  def section(name, measure):
    if name not in _ONLY.value:
      return
    print(f'{name}:', flush=True)
    report[name] = measure()
    report['sections_done'].append(name)
    _write(report, path)

  def pairs(batch_sizes):
    return [
      {'dtype': dtype, 'log_method': log_method, **figures}
      for batch_size in batch_sizes
      for log_method in _LOG_METHODS.value
      for dtype in _DTYPES
      for figures in [
        throughput.measure_pair(
          variables, projections, batch_size, dtype, log_method
        )
      ]
    ]

  section('pairs', lambda: pairs(batches[:1]))
  section(
    'stages',
    lambda: {
      log_method: throughput.measure_stages(
        variables, projections, batches[0], 'float32', log_method
      )
      for log_method in _LOG_METHODS.value
    },
  )
  section(
    'agreement',
    lambda: measure_agreement(variables, projections, _LOG_METHODS.value),
  )
  section(
    'host_pipeline',
    lambda: {
      log_method: throughput.measure_host_pipeline(
        variables, projections, batches[0], 'bfloat16', log_method
      )
      for log_method in _LOG_METHODS.value
    },
  )
  section(
    'mix',
    lambda: throughput.measure_mix(
      batches[0],
      None if _SMOKE.value else variables,
      scale=None if _SMOKE.value else 1.0,
    ),
  )
  section('small_batches', lambda: pairs(batches[1:]))
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
