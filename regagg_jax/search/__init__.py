"""Search (Sec. 4): region-to-region similarity and the FAISS region index.

similarity    image similarity (eq. 7), regional query expansion (eq. 8)
region_index  FAISS index over region vectors: build, save, load
index_search  index search: exact re-scoring, shortlist, eq. 7 / 8 re-rank
"""

from regagg_jax.search import index_search
from regagg_jax.search import region_index
from regagg_jax.search import similarity
from regagg_jax.search.region_index import RegionIndex
from regagg_jax.search.similarity import image_similarity
from regagg_jax.search.similarity import query_expansion
