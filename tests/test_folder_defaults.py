"""A user's small folder with the defaults: configs/folder.py on 16 sample
photos (4 objects x 4 views, groundtruth.json) comes within 0.05 mAP of the
best PCA-whitening D of a sweep (docs/numerics.md, "Whitening on few
images")."""

import json
import shutil

import pytest

from configs import folder as folder_config
from regagg_jax.evaluation import metrics
from regagg_jax.experiment import modes
from regagg_jax.experiment import fitting
from regagg_jax.experiment import retrieval
from regagg_jax.experiment import searches
from regagg_jax.experiment import workspace


@pytest.mark.weights
@pytest.mark.slow
def test_default_eval_is_near_the_best_swept_dim(tmp_path, sample_paths):
  photos = tmp_path / 'photos'
  photos.mkdir()
  for path in sample_paths[:16]:
    shutil.copy(path, photos)
  groups = {p.name: f'object{int(p.stem[7:]) // 4}' for p in sample_paths[:16]}
  (photos / 'groundtruth.json').write_text(json.dumps({'groups': groups}))
  config = folder_config.get_config(str(photos))
  config.workdir = str(tmp_path / 'work')
  default = modes.evaluate(config)

  dataset = workspace.load_dataset(config)
  database, _ = workspace.prepare(config, dataset, fit=False)  # the store
  swept = {}
  for dim in (4, 8, 16, 32, 64, 127):
    variant = config.copy_and_resolve_references()
    variant.pca.dim, variant.pca.min_vectors_per_dim = dim, 1
    variant.pca.min_whitened_dim = 1
    fitted = fitting.fit(variant, database)
    ranking = retrieval.search(variant, database, database, fitted)
    ranks = searches.dataset_ranks(
      ranking, database, dataset.query_indices.astype(int)
    )
    swept[dim] = metrics.evaluate(dataset, ranks)['mAP']
  assert default['mAP'] >= max(swept.values()) - 0.05, (default, swept)
  assert swept[127] < 0.6  # the old default (D at the rank) was the trap
