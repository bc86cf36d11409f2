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
  return config
