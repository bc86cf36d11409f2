"""Search (Sec. 4): region-to-region similarity, the FAISS region index and
re-ranking.

similarity    image similarity (eq. 7), regional query expansion (eq. 8,
              alpha-QE)
region_index  FAISS index over region vectors: build, save, load
index_search  index search: exact re-scoring, shortlist, eq. 7 / 8 re-rank
graph         regional diffusion, offline: the reciprocal kNN region graph
diffusion     regional diffusion, online: y, conjugate gradient, pooling
rerank        the search.rerank options; diffusion re-rank of a search
"""

from regagg_jax.search import diffusion
from regagg_jax.search import graph
from regagg_jax.search import index_search
from regagg_jax.search import region_index
from regagg_jax.search import rerank
from regagg_jax.search import similarity
from regagg_jax.search.region_index import RegionIndex
from regagg_jax.search.similarity import image_similarity
from regagg_jax.search.similarity import query_expansion
from regagg_jax.search.graph import RegionGraph
from regagg_jax.search.rerank import RERANK
