"""Any folder of images with a simple ground-truth file (users' collections).

The folder holds the images and the ground-truth file read by
regagg_jax.evaluation.datasets (see its docstring for the format); the argument is the
folder.

  python run.py --config=configs/folder.py:/path/to/photos --mode=eval
  python run.py --config=configs/folder.py:/path/to/photos --mode=search \
      --config.search.queries=/path/to/query.jpg --config.search.box=10,20,200,300
"""

from configs import default


def get_config(root='data/samples'):
  """Returns a config evaluating the folder `root`."""
  config = default.get_config()
  config.name = 'folder'
  config.workdir = 'outputs/folder'
  config.eval.dataset = 'folder'
  config.eval.root = root
  # Users' photos (6000x4000 would need ~6 GB for conv1_1 alone) are shrunk
  # to a longer side of 1024 px, as the paper does for Holidays, with one log
  # line per resized image; 0 keeps original sizes (the benchmark configs).
  config.features.max_size = 1024
  return config
