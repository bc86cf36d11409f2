"""Table 1 style, beyond the paper: O2_R (or a variant) + diffusion.

Regional diffusion (Iscen et al. CVPR 2017; defaults in configs/default.py,
search.diffusion): the mutual kNN graph of the database's regions (k = 200,
s^3) is built once in <workdir>/graphs, then the top 1000 images of each
query are re-ranked by (I - 0.99 S) f = y, solved by conjugate gradient,
and pooled per image (generalised max pooling). A global variant (crow,
...) diffuses on the image graph.

One command per cell (dataset column x D, optionally a variant of
paper.VARIANTS); results go to
outputs/<dataset>/results/<variant>+diffusion-<dataset>-<D>-<hash>.json.

  python run.py --config=configs/table1_diffusion.py:oxford5k,128 --mode=eval
  python run.py --config=configs/table1_diffusion.py:oxford5k,256 --mode=eval
  python run.py --config=configs/table1_diffusion.py:oxford5k,512 --mode=eval
  python run.py --config=configs/table1_diffusion.py:oxford5k_full,128 --mode=eval
  python run.py --config=configs/table1_diffusion.py:oxford5k_full,256 --mode=eval
  python run.py --config=configs/table1_diffusion.py:oxford5k_full,512 --mode=eval
  python run.py --config=configs/table1_diffusion.py:paris6k,128 --mode=eval
  python run.py --config=configs/table1_diffusion.py:paris6k,256 --mode=eval
  python run.py --config=configs/table1_diffusion.py:paris6k,512 --mode=eval
  python run.py --config=configs/table1_diffusion.py:oxford5k,512,crow --mode=eval
  python run.py --config=configs/table1_diffusion.py:paris6k,512,crow --mode=eval
"""

from configs import paper


def get_config(arg='oxford5k,512'):
  """Returns the config of one cell; arg is '<dataset>,<D>[,<variant>]'."""
  return paper.make_rerank_config(arg, 'diffusion')
