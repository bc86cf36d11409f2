"""Candidate regions (Sec. 2): salient points, clusters, 2^L convex hulls.

proposal           RegionOptions; detector backend (hesaff | jax); points ->
                   clusters -> masks of one image or a padded batch
region_masks       cluster subsets -> 2^L hull masks on the conv grid, drawing
keypoints          pyhesaff detection (host), the N_max / N_min rule
hessian_affine     the JAX Hessian-affine detector (the jax backend)
scale_space        its octaves: Gaussian levels, DoH extrema, localisation
affine_adaptation  affine shape adaptation of its candidates
clustering         global fast k-means
hulls              convex hulls of point subsets rasterised on the grid
"""

from regagg_jax.regions import affine_adaptation
from regagg_jax.regions import clustering
from regagg_jax.regions import hessian_affine
from regagg_jax.regions import hulls
from regagg_jax.regions import keypoints
from regagg_jax.regions import proposal
from regagg_jax.regions import region_masks
from regagg_jax.regions import scale_space
from regagg_jax.regions.clustering import global_fast_kmeans
from regagg_jax.regions.hulls import rasterise_hulls
from regagg_jax.regions.keypoints import select_salient
from regagg_jax.regions.proposal import RegionOptions
from regagg_jax.regions.proposal import detect
from regagg_jax.regions.proposal import is_traceable
from regagg_jax.regions.proposal import propose
from regagg_jax.regions.proposal import propose_batch
from regagg_jax.regions.region_masks import compute_region_masks
from regagg_jax.regions.region_masks import draw_regions
from regagg_jax.regions.region_masks import subset_members
