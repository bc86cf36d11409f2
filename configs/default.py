"""Default configuration: the proposed method (O2_R, K' = 128, D = 512).

Every other config starts from this one. The values follow the paper
(Sec. 5): VGG19 conv5_4 (K = 512), N_max = 4000, N_min = 300, L = 3 clusters
(M = 8 regions), K' = 128, D = 512, N_QE = 10. Without a dataset config it
evaluates on the bundled UKBench samples:

  python run.py --config=configs/default.py --mode=eval

String options are keys of one lookup table per stage: settings.WEIGHTS,
proposal.propose's backends, method_table.POOLING, settings.QUERY_REGIONS,
the dataset names of datasets.load ('samples', 'ukbench', 'oxford5k',
'paris6k', 'roxford5k', 'rparis6k', 'holidays', 'folder') and modes.MODES.
"""

import ml_collections


def get_config():
  """Returns the default ConfigDict (sections: one per pipeline stage)."""
  config = ml_collections.ConfigDict()
  config.name = 'default'  # results file name: <workdir>/results/<name>.json
  config.workdir = 'outputs/default'  # stores, fitted whitening, results

  config.features = ml_collections.ConfigDict()
  config.features.weights = 'imagenet'  # 'imagenet' (real VGG19) | 'random'
  config.features.widths = (64, 128, 256, 512, 512)  # only for 'random'
  config.features.seed = 0  # PRNG seed of 'random' weights
  config.features.max_size = 0  # longer side in px; 0 keeps the original
  config.features.dtype = 'float32'  # VGG19 compute: 'float32' | 'bfloat16'
  config.features.batch_size = 4  # images per jitted forward
  config.features.cache_mib = 2048  # demo: conv5_4 kept between O2's passes
  config.features.num_threads = 4  # host threads decoding images
  config.features.prefetch = 2  # batches decoded ahead of the device
  config.features.shard_size = 1000  # images per store shard (resume unit)
  config.features.store_dtype = 'float32'  # stored descriptors | 'float16'

  config.regions = ml_collections.ConfigDict()
  config.regions.backend = 'hesaff'  # 'hesaff' (pyhesaff) | 'jax'
  config.regions.n_max = 4000  # N_max salient points (Sec. 2)
  config.regions.n_min = 300  # N_min fallback points (Sec. 2)
  config.regions.num_clusters = 3  # L: M = 2^L regions
  config.regions.min_cells = 1  # smaller regions R'_m are discarded

  config.pooling = ml_collections.ConfigDict()
  # 'o2' (eq. 4-5) | 'o1' (eq. 9) | 'spoc' | 'mac' | 'crow' | 'rmac' | 'gem'
  config.pooling.method = 'o2'
  config.pooling.regional = True  # R: all 2^L regions; W: only R_M (image)
  config.pooling.k_prime = 128  # K' of eq. (4)
  # eq. 5 eigen-solver: 'qr' (QR + SVD, ~1e-6 accurate; CPU) | 'eigh' (one
  # batched Gram matmul + eigh, ~1e-3; for GPUs / TPUs)
  config.pooling.log_method = 'qr'
  config.pooling.offdiag_scale = 1.0  # vec() off-diagonal factor (1: paper)
  config.pooling.gem_power = 3.0  # p of the GeM baseline
  config.pooling.rmac_levels = 3  # scales of the R-MAC baseline grid
  # U^1 of eq. (4) is fitted on this many images spread over the set (0: all)
  # before the store is encoded, so they go through VGG19 twice. 256 images
  # give ~2048 region vectors, 16 per dimension of K' = 128 (the whitening's
  # margin); on data/samples, fitting on a quarter of the set moves O2_R's
  # mAP by 0.004 (0.9910 -> 0.9868, benchmarks/reduction_sample.py).
  config.pooling.reduction_images = 256

  config.pca = ml_collections.ConfigDict()
  config.pca.dim = 512  # D of eq. (6)
  config.pca.whiten = True  # eq. (6) divides by s_d
  config.pca.fit_on = ''  # '' = the database; else a dataset name or 'folder'
  config.pca.fit_root = ''  # image folder of `fit_on`
  # D is capped to (valid fitting vectors) / min_vectors_per_dim: whitening
  # fitted on fewer vectors than ~16 times D amplifies noise directions (on
  # data/samples: docs/numerics.md). When the cap would force D below
  # min_whitened_dim, PCA without whitening is kept (D up to the vectors'
  # rank): it measures better on small sets. Both are printed when they bite.
  config.pca.min_vectors_per_dim = 16
  config.pca.min_whitened_dim = 32
  # Store eq. (6) outputs (D dims) instead of unwhitened descriptors: U^1 and
  # the whitening are learnt on fit_on first. For millions of images.
  config.pca.store_whitened = False

  config.search = ml_collections.ConfigDict()
  config.search.qe = False  # regional query expansion (eq. 8)
  config.search.n_qe = 10  # N_QE
  config.search.qe_include_query = False  # eq. 8: top N_QE regions only
  # Re-ranking after eq. (7) (rerank.RERANK): 'none' | 'qe' (eq. 8, as
  # search.qe=True) | 'alpha_qe' | 'diffusion'.
  config.search.rerank = 'none'
  # alpha-QE (Radenovic, Tolias, Chum, TPAMI 2018): the best-matched regions
  # of the top n results weighted by s^alpha, plus the query's own region.
  # alpha = 3 is theirs; n = N_QE = 10 of the paper keeps it comparable to
  # eq. (8).
  config.search.alpha_qe = ml_collections.ConfigDict({'n': 10, 'alpha': 3.0})
  # Regional diffusion (Iscen et al., CVPR 2017; their run_test.m, regional
  # setting): a reciprocal kNN graph of k = 200 neighbours per region,
  # affinity s^gamma with gamma = 3, kq = 200 nearest regions per query
  # region, alpha = 0.99, 20 conjugate-gradient iterations, tolerance 1e-6,
  # generalised max pooling ('gmp' | 'sum' | 'max'). The top `truncate`
  # images of the first search are diffused (their truncation; 0: all, as
  # they do up to 6k images): 1000 keeps a query under 100 ms at 1M images
  # (benchmarks/rerank_scale.py). The graph is built once per store
  # (exact for search.index 'exact', else through the region index) in
  # shards of shard_rows region slots.
  config.search.diffusion = ml_collections.ConfigDict(
    {
      'k': 200,
      'gamma': 3.0,
      'alpha': 0.99,
      'query_neighbours': 200,
      'iterations': 20,
      'tolerance': 1e-6,
      'pooling': 'gmp',
      'truncate': 1000,
      'shard_rows': 100000,
    }
  )
  config.search.chunk_size = 1024  # database images per similarity chunk
  # 'exact': eq. (7) on every image; 'flat' | 'ivfpq' | 'hnsw': FAISS region
  # index, per-image max of the top k_regions regions per query region,
  # then exact eq. (7) / eq. (8) on the best `shortlist` images.
  config.search.index = 'exact'
  config.search.k_regions = 1500
  # Order the retrieved regions by their exact score (read from the store)
  # before the per-image max, not by the index's approximate one.
  config.search.rescore = True
  config.search.shortlist = 300
  # nlist 0: ~sqrt(region vectors). 128-byte fast-scan codes (m = 256
  # four-bit sub-codes for D = 512), 64 lists probed, 1500 regions per query
  # region, 300 images re-ranked: recall@100 0.970 at 44x brute force on 1M
  # simulated images (benchmarks/search_scale.py, README "Search at scale").
  config.search.ivfpq = ml_collections.ConfigDict(
    {
      'nlist': 0,
      'm': 256,
      'nbits': 4,
      'fast_scan': True,
      'nprobe': 64,
      'train_size': 100000,
      'coarse': 'hnsw',
      'hnsw_m': 32,
      'quantizer_ef_search': 64,
      'seed': 0,
    }
  )
  config.search.hnsw = ml_collections.ConfigDict(
    {'hnsw_m': 32, 'ef_construction': 80, 'ef_search': 128}
  )
  config.search.top_k = 100  # results written per query by --mode=search
  config.search.query_regions = 'all'  # 'all' regions | 'whole' (R_M only)
  config.search.queries = ''  # --mode=search: image file, folder or list
  config.search.box = ''  # --mode=search: 'x1,y1,x2,y2' crop of one query

  config.eval = ml_collections.ConfigDict()
  config.eval.dataset = 'samples'  # a datasets.load name, or 'folder'
  config.eval.root = 'data/samples'  # image folder of the dataset
  config.eval.gnd_dir = ''  # ground-truth folder; '' = datasets' default
  config.eval.rotation_file = ''  # Holidays: 'name degrees' lines
  # Folder of distractor images added to the database (e.g. R1M, see
  # sources.DISTRACTORS); they are never relevant.
  config.eval.distractors = ''
  config.eval.crop_queries = True  # Oxford/Paris: crop queries to their box
  config.eval.figure_queries = 6  # demo: queries drawn in fig2.png
  config.eval.figure_results = 5  # demo: results per query in fig2.png
  return config
