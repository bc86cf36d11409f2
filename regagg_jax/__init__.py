"""regagg_jax: Regional Deep Feature Aggregation for Image Retrieval in JAX.

Jeong, Choo, Seo, Cho, "Regional deep feature aggregation for image retrieval",
ICASSP 2017. One folder per stage of the pipeline, each with a face
(`__init__.py`) naming its public functions:

  features/     images, host reading, VGG19 conv5_4, weights, alpha and
                beta (eq. 1-2)
  regions/      Sec. 2: Hessian-affine points, N_max / N_min, global fast
                k-means, 2^L convex-hull masks
  aggregation/  Sec. 3: pooling (eq. 3-5, 9), baselines, the method table,
                PCA and PCA-whitening (eq. 4, 6)
  search/       Sec. 4: similarity (eq. 7), query expansion (eq. 8), the
                FAISS region index and its search
  encoding/     a padded batch in one jit; image files -> descriptors;
                device mesh and hosts
  storage/      stores, fits and results on disk
  evaluation/   datasets and ground truth, AP / mAP protocols, Fig. 2
  experiment/   the only reader of a config: encode / fit, retrieval,
                stores, workspace, searches, run.py's modes

Research code imports a stage, e.g.
`from regagg_jax.aggregation import second_order` or
`from regagg_jax import aggregation`.

Shape glossary used in every docstring:
  B   images in a batch
  H W height and width of a feature map (conv5_4 grid); H_I W_I of an image
  K   channels of conv5_4 (512)
  K'  reduced local-descriptor dimension (eq. 4, 128)
  M   regions per image (2^L)
  P   salient points per image (N_max, padded)
  N   database images
  V   region vectors in a FAISS index
  Q   query images
  D   descriptor dimension after whitening (eq. 6)
"""

__version__ = '0.1.0'
