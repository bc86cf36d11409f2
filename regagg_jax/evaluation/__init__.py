"""Evaluation: benchmarks and their ground truth, mAP protocols, figures.

datasets     the benchmarks: load by name, image lists, query boxes
folders      a user's folder of images with its groundtruth.json
sources      official sources of the images, download instructions
groundtruth  the Dataset record; untrusted ground-truth files read safely
precision    AP, mAP and mP@k of rankings (host numpy)
metrics      each benchmark's protocol: evaluate(dataset, ranks)
figures      the paper's Fig. 2: queries beside their best-matched results
"""

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import figures
from regagg_jax.evaluation import folders
from regagg_jax.evaluation import groundtruth
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation import precision
from regagg_jax.evaluation import sources
from regagg_jax.evaluation.groundtruth import Dataset
from regagg_jax.evaluation.metrics import compute_revisited_map
from regagg_jax.evaluation.metrics import evaluate
from regagg_jax.evaluation.precision import average_precision
from regagg_jax.evaluation.precision import compute_map
