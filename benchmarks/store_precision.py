"""float16 versus float32 descriptor storage: mAP change, error, disk size.

Encodes the demo set once (configs/demo.py: the 56 bundled UKBench images,
real VGG19, 384 px, hesaff regions; one VGG19 pass for every method), writes
each method's store with store_writer.save_store as float32 and as float16,
loads both back (float16 is cast up to float32) and, for every demo row (O2_R,
O2_W, O1_R, O1_W and the global baselines), fits PCA-whitening on the loaded
store as the demo does (fitting.fit, D = 16), ranks every image against all
56 by eq. (7) (exact, no QE, as the demo) and scores it (N-S, mAP). Prints, per row, the scores of both, the
mAP change, the largest change of an eq. (7) similarity, the max / mean
|error| of the stored (unwhitened, l2-normalised) descriptors over valid
regions, and the bytes of the shard files float16 / float32. Both variants run in this process on the same
encoding, so the only difference is the storage dtype.

  PYTHONPATH=. nice python3 benchmarks/store_precision.py  # repo root
"""

import os
import tempfile

from absl import app
import numpy as np

from configs import demo
from regagg_jax.evaluation import datasets
from regagg_jax.encoding import batch_encoder
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation import precision
from regagg_jax.experiment import modes
from regagg_jax.aggregation import pca
from regagg_jax.experiment import fitting
from regagg_jax.experiment import pipeline
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader
from regagg_jax.search import similarity
from regagg_jax.storage import store_format
from regagg_jax.experiment import stores
from regagg_jax.experiment import workspace


def _shard_bytes(path):
  return sum(
    os.path.getsize(os.path.join(path, f))
    for f in os.listdir(path)
    if f.startswith('shard_')
  )


def _scores(config, dataset, store):
  """(N-S and mAP, float32 (N, N) eq. 7 similarities) of `store` with
  whitening fitted on it as the demo does; every image is a query."""
  fitted = fitting.fit(config, store, fitted_on=dataset.name)
  valid = store.valid
  if not config.pooling.regional:  # W: R_M, the last region, only
    valid = valid & (np.arange(valid.shape[1]) == valid.shape[1] - 1)
  whitened = pca.apply(fitted.whitening, store.descriptors, valid)  # eq. (6)
  scores, _ = similarity.image_similarity(whitened, valid, whitened, valid)
  scores = np.asarray(scores)  # eq. (7)
  rows = np.asarray(store.metadata['rows'])
  return metrics.evaluate(
    dataset, rows[precision.ranks_from_scores(scores)]
  ), scores


def main(argv):
  del argv
  batch_encoder.limit_lapack_threads()
  config = demo.get_config()
  dataset = workspace.load_dataset(config)
  if not np.array_equal(dataset.query_indices, np.arange(len(dataset.images))):
    raise ValueError(f'{dataset.name}: every image must be a query')
  methods = sorted({method for method, _ in modes.DEMO_ROWS.values()})
  by_method = pipeline.encode_methods(
    config,
    datasets.database_paths(dataset),
    methods,
    rotations=stores.rotations(dataset, dataset.images),
    apply_exif=dataset.apply_exif,
  )
  loaded, errors, sizes = {}, {}, {}
  with tempfile.TemporaryDirectory() as directory:
    for method, store in by_method.items():
      for dtype in store_format.DTYPES:
        path = os.path.join(directory, f'{method}-{dtype}')
        store_writer.save_store(path, store, dtype=dtype)
        loaded[method, dtype] = store_reader.load_store(path)
        sizes[method, dtype] = _shard_bytes(path)
      difference = np.abs(
        loaded[method, 'float16'].descriptors - store.descriptors
      )[store.valid]
      errors[method] = (difference.max(), difference.mean())
      np.testing.assert_array_equal(
        loaded[method, 'float32'].descriptors, store.descriptors
      )
  print(
    f'{dataset.name}: {len(dataset.images)} images, every image a query;'
    ' PCA-whitening D = 16 fitted on each loaded store'
  )
  columns = (
    'row',
    'D_store',
    'N-S f32',
    'N-S f16',
    'mAP f32',
    'mAP f16',
    'dmAP',
    'max|dscore|',
    'max|err|',
    'mean|err|',
    'bytes f16/f32',
  )
  print(' | '.join(columns))
  for label, (method, regional) in modes.DEMO_ROWS.items():
    variant = config.copy_and_resolve_references()
    variant.pooling.method, variant.pooling.regional = method, regional
    full, full_scores = _scores(variant, dataset, loaded[method, 'float32'])
    half, half_scores = _scores(variant, dataset, loaded[method, 'float16'])
    print(
      ' | '.join(
        [
          label,
          str(by_method[method].descriptors.shape[-1]),
          f'{full["N-S"]:.4f}',
          f'{half["N-S"]:.4f}',
          f'{full["mAP"]:.4f}',
          f'{half["mAP"]:.4f}',
          f'{half["mAP"] - full["mAP"]:+.4f}',
          f'{np.abs(half_scores - full_scores).max():.2e}',
          f'{errors[method][0]:.2e}',
          f'{errors[method][1]:.2e}',
          f'{sizes[method, "float16"] / sizes[method, "float32"]:.3f}',
        ]
      )
    )


if __name__ == '__main__':
  app.run(main)
