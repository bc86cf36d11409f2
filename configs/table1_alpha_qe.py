"""Table 1 style, beyond the paper: O2_R (or a variant) + alpha-QE.

alpha-QE (Radenovic et al. TPAMI 2018): the best-matched regions of the top
search.alpha_qe.n = 10 results weighted by s^alpha (alpha = 3) plus the
query's own region, then eq. (8). A global variant (crow, spoc, mac, rmac,
gem; M = 1) gets the global form l2(q + sum s_i^alpha d_i), so the rows
compare fairly.

One command per cell (dataset column x D, optionally a variant of
paper.VARIANTS); results go to
outputs/<dataset>/results/<variant>+alpha_qe-<dataset>-<D>-<hash>.json.

  python run.py --config=configs/table1_alpha_qe.py:oxford5k,128 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:oxford5k,256 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:oxford5k,512 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:oxford5k_full,128 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:oxford5k_full,256 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:oxford5k_full,512 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:paris6k,128 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:paris6k,256 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:paris6k,512 --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:oxford5k,512,crow --mode=eval
  python run.py --config=configs/table1_alpha_qe.py:paris6k,512,crow --mode=eval
"""

from configs import paper


def get_config(arg='oxford5k,512'):
  """Returns the config of one cell; arg is '<dataset>,<D>[,<variant>]'."""
  return paper.make_rerank_config(arg, 'alpha_qe')
