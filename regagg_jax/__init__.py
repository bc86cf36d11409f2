"""regagg_jax: Regional Deep Feature Aggregation for Image Retrieval in JAX.

Jeong, Choo, Seo, Cho, "Regional deep feature aggregation for image retrieval",
ICASSP 2017. One module per pipeline stage:

  images      load / resize / pad images on the host (numpy, OpenCV)
  weights     fetch, verify and convert the Caffe/Keras VGG19 weights; orbax I/O
  vgg19       Flax VGG19 up to conv5_4 + ReLU, Caffe preprocessing
  weighting   spatial weights alpha (eq. 1), channel weights beta (eq. 2)
  keypoints   Hessian-affine detection (hesaff | jax), salient point selection
  hessian_affine  JAX Hessian-affine detector (keypoints' jax backend)
  affine_adaptation  affine shape adaptation of its candidates (hesaff rule)
  clustering  global fast k-means
  hulls       convex hulls of point subsets rasterised on the conv grid
  regions     power set of clusters -> 2^L convex-hull masks on the conv grid
  pooling     first-order (eq. 3, 9), second-order (eq. 4-5), baselines
  pca         PCA (eq. 4, U1) and PCA-whitening (eq. 6, U2)
  similarity  region-to-region image similarity (eq. 7), query expansion (eq. 8)
  index       Store and Fit in memory, their hashes, fits and results on disk
  store_format  the files of a store directory: header, shards (versioned)
  sharded_store  stores on disk: built shard by shard, resumable; load, save
  region_index  FAISS index over region vectors: build, save, load
  region_search  index search: exact re-scoring, eq. 7 / eq. 8 re-rank
  datasets    benchmarks: image lists, ground truth, query boxes
  evaluation  AP / mAP protocols (numpy, host)
  reading     host side: read / crop / shrink images, bucket, pad, prefetch
  pooling_methods  the pooling.method table: per-image pooling, U^1 needs
  encoder     a padded batch -> region descriptors: one jit (all stages)
  file_encoder  image files -> stores: reading, batches, the encoder, U^1
  parallel    device mesh (jax.sharding) and hosts (jax.distributed)
  figures     the paper's Fig. 2: queries beside their best-matched results
  pipeline    encode / fit as a config says
  retrieval   search as a config says: exact eq. 7 or region index + re-rank
  workspace   a dataset's stores, fits and indexes kept in the workdir
  modes       what run.py --mode runs: demo / encode / fit / search / eval

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

__version__ = "0.1.0"
