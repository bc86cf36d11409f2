"""Oxford5k (Philbin et al. 2007): 5,063 images, 55 queries, original size.

Images go in data/oxford5k/ (oxbuild_images.tgz from the official site,
https://www.robots.ox.ac.uk/~vgg/data/oxbuild/); ground truth is read from
eval.gnd_dir. Queries are cropped to their box at full resolution and
described by the whole crop R_M only (paper, Sec. 5); the 'full' variant
('OF' in Table 1) uses uncropped queries with all their regions.

  python run.py --config=configs/oxford5k.py --mode=eval
  python run.py --config=configs/oxford5k.py:full --mode=eval
"""

from configs import default

VARIANTS = {'cropped': True, 'full': False}
"""Query variant -> whether queries are cropped to their box."""


def get_config(variant='cropped'):
  """Returns the Oxford5k config; variant is a VARIANTS key."""
  if variant not in VARIANTS:
    raise ValueError(
      f'variant must be one of {sorted(VARIANTS)}, got {variant!r}'
    )
  config = default.get_config()
  config.name = 'oxford5k' if variant == 'cropped' else 'oxford5k_full'
  config.workdir = 'outputs/oxford5k'
  config.eval.dataset = 'oxford5k'
  config.eval.root = 'data/oxford5k'
  config.eval.crop_queries = VARIANTS[variant]
  config.search.query_regions = 'whole' if VARIANTS[variant] else 'all'
  return config
