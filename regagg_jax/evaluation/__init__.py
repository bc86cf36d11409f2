"""Evaluation: benchmarks and their ground truth, mAP protocols, figures.

datasets     image lists, ground truth, query boxes, download instructions
groundtruth  untrusted ground-truth files read safely (pickle, JSON)
metrics      AP / mAP protocols (host numpy)
figures      the paper's Fig. 2: queries beside their best-matched results
"""

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import figures
from regagg_jax.evaluation import groundtruth
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation.datasets import Dataset
from regagg_jax.evaluation.metrics import average_precision
from regagg_jax.evaluation.metrics import compute_map
from regagg_jax.evaluation.metrics import compute_revisited_map
from regagg_jax.evaluation.metrics import evaluate
