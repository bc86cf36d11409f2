"""The demo (what `python run.py` runs): the 56 bundled UKBench images.

Encodes data/samples (14 objects x 4 photos, group = id // 4, 384 px) with the
real VGG19 once, pools it with every method (O2_R, O2_W, O1_R, O1_W and the
SPoC, MAC, CroW, R-MAC, GeM baselines), uses every image as a query against
all 56, prints N-S (same-object images in the top 4, max 4) and mAP, and
draws fig2.png (queries beside their top results, best-matched region
shaded).

PCA-whitening is fitted on the 56 images themselves, as the paper fits on
the database. Whitening fitted on fewer vectors than ~16 times D amplifies
noise directions and ruins mAP (on these images D = 64 costs the global
methods ~0.6 mAP), so every method uses the same small D = 16: the regional
methods whiten it (~440 fitting vectors, 27 per dimension); the global ones,
with 56 vectors, are too few to whiten 16 dimensions with the default margin
(pca.min_vectors_per_dim = 16) and keep PCA without whitening at D = 16
(pca.choose_whitening; the table's 'whiten' column says which).

  python run.py
  python run.py --config=configs/demo.py --mode=demo
"""

from configs import default


def get_config():
  """Returns the demo config."""
  config = default.get_config()
  config.name = 'demo'
  config.workdir = 'outputs/demo'
  config.pca.dim = 16
  config.eval.dataset = 'samples'
  config.eval.root = 'data/samples'
  return config
