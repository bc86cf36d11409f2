"""stores: a dataset's store is encoded once (images beyond the U^1 sample
through the network once), and a finished store with a damaged file is
repaired by a rerun."""

import numpy as np
import pytest

from regagg_jax.evaluation import datasets
from regagg_jax.experiment import stores
from regagg_jax.experiment import workspace
from regagg_jax.storage import store_reader
from tests.test_end_to_end import _config
from tests.test_end_to_end import folder  # noqa: F401, F811 (the fixture)


def _database(config, dataset):
  """The dataset's database store, as workspace.prepare encodes it."""
  return stores.dataset_store(
    config,
    dataset,
    'database',
    datasets.database_paths(dataset),
    dataset.images,
  )


@pytest.mark.parametrize(
  'damaged, rows', [('shard_00001.npz', [[3, 4, 5]]), ('metadata.json', [])]
)
def test_rerun_repairs_exactly_the_damaged_file(
  tmp_path, folder, encoded_rows, damaged, rows
):
  """A bit flipped in a finished store's shard or metadata: load_store
  names the file and advises a rerun; the rerun re-encodes only that
  shard's rows (or none) and gives the first store."""
  config = _config(tmp_path, folder)
  config.features.shard_size = 3
  dataset = workspace.load_dataset(config)
  first = _database(config, dataset)
  (store_dir,) = (tmp_path / 'work' / 'stores').iterdir()
  file = store_dir / damaged
  data = bytearray(file.read_bytes())
  data[len(data) // 2] ^= 0xFF
  file.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f'{damaged}.*run the same command'):
    store_reader.load_store(store_dir)
  encoded = encoded_rows()
  again = _database(config, dataset)
  assert encoded == rows
  np.testing.assert_array_equal(again.descriptors, first.descriptors)
  np.testing.assert_array_equal(again.masks, first.masks)
  assert again.metadata == first.metadata


def test_images_beyond_the_u1_sample_go_through_the_network_once(
  tmp_path, folder, monkeypatch
):
  """U^1 (eq. 4) is fitted on pooling.reduction_images of the 9 images
  (8 photos and the unreadable file) spread over the set, then the store
  encodes all 9: 9 + 3 images read, not 9 + 9, each pass labelled."""
  from regagg_jax.features import reading  # pylint: disable=g-import-not-at-top

  passes, original = [], reading.read_batches

  def recording(read, rows, *args, **kwargs):
    passes.append((kwargs['desc'], list(rows)))
    return original(read, rows, *args, **kwargs)

  monkeypatch.setattr(reading, 'read_batches', recording)
  config = _config(tmp_path, folder)
  config.pooling.reduction_images = 3
  _database(config, workspace.load_dataset(config))
  assert passes == [
    ('fitting U^1 (eq. 4): eq. 3 regions', [0, 4, 8]),
    ('encoding (o2)', list(range(9))),
  ]


def test_rotations_default_to_zero():
  dataset = datasets.Dataset(
    name='d',
    protocol='custom',
    images=('a', 'b'),
    queries=(),
    query_indices=np.zeros(0, np.int64),
    boxes=None,
    positives=(),
    junk=(),
    image_root='',
    rotations={'b': 90},
  )
  assert stores.rotations(dataset, ['a', 'b', 'b']) == [0, 90, 90]
