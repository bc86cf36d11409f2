"""Offline stage of regional diffusion: the mutual kNN graph of the regions.

Iscen, Tolias, Avrithis, Furon, Chum, "Efficient diffusion on region
manifolds", CVPR 2017 (Sec. 3): every valid database region vector is a
node; W_ij = max(s_ij, 0)^gamma when i and j are among each other's k
nearest neighbours (reciprocal kNN), else 0; S = D^-1/2 W D^-1/2 is formed
online on the (truncated) graph (`diffusion`). A node is a region slot
n * M + m of the (N, M) store, so invalid slots are isolated nodes.

  RegionGraph        padded neighbour table (N * M, k) and its affinities
  nearest_regions    k nearest valid regions of slot ranges: exact (JAX) or
                     through a region_index.RegionIndex (FAISS), re-scored
  mutual_affinity    reciprocal kNN edges and their symmetric s^gamma

The table is built shard by shard and kept on disk by storage/graphs.py.

Public: RegionGraph, DEFAULT_NEIGHBOURS, DEFAULT_GAMMA, nearest_regions,
mutual_affinity.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.search import index_search
from regagg_jax.search import region_index as region_index_lib

DEFAULT_NEIGHBOURS = 200
"""k of the graph: Iscen et al.'s regional setting (their run_test.m: k = 200
regional, 50 global)."""

DEFAULT_GAMMA = 3.0
"""gamma of the affinity s^gamma (Iscen et al., Sec. 5; also Zhou et al.)."""


class RegionGraph(NamedTuple):
  """The mutual kNN graph over the region slots of N images x M regions.

  Attributes:
    neighbours: int32 (N * M, k) slot n' * M + m' of each reciprocal
      neighbour, -1 padded (invalid slots have none).
    weights: float32 (N * M, k) affinity max(s, 0)^gamma, 0 where padded;
      symmetric: the edge (i, j) has the weight of (j, i).
    metadata: JSON-serialisable dict: k, gamma, knn ('exact' or an index
      kind), num_images, num_regions, store_hash, whitening_hash.
  """

  neighbours: np.ndarray
  weights: np.ndarray
  metadata: dict


@functools.partial(jax.jit, static_argnames=('k',))
def _exact_block(block, slots, vectors, vectors_valid, *, k):
  """Exact k nearest valid regions of `block` (itself excluded).

  Args:
    block: float32 (C, D) region vectors; slots: int32 (C,) their slots.
    vectors: float32 (R, D) every slot's vector; vectors_valid: bool (R,).

  Returns:
    float32 (C, k) similarities (-inf: none) and int32 (C, k) slots (-1).
  """
  similarity = block @ vectors.T  # VecSim of eq. (7)
  itself = slots[:, None] == jnp.arange(vectors.shape[0])[None]
  similarity = jnp.where(vectors_valid[None] & ~itself, similarity, -jnp.inf)
  top, found = jax.lax.top_k(similarity, k)
  return top, jnp.where(jnp.isfinite(top), found, -1).astype(jnp.int32)


def nearest_regions(
  descriptors, valid, *, k, region_index=None, chunk=512, shortlist=4
):
  """A function giving the k nearest valid regions of a range of slots.

  Exact: every similarity of a block of slots to all R = N * M slots, in
  JAX (the whole (R, D) set in float32 on the device: small sets). Through
  a region index: its top shortlist * (k + 1) per vector, re-scored exactly
  from `descriptors` (itself dropped) and cut to k, so the graph's
  affinities are exact even with PQ codes.

  Args:
    descriptors: float32 or float16 (N, M, D) l2-normalised whitened
      regions (eq. 6), e.g. a memory map.
    valid: bool (N, M) valid regions (graph nodes with edges).
    k: neighbours per node, < the number of valid regions.
    region_index: region_index.RegionIndex of these descriptors, or None
      for the exact search.
    chunk: slots searched at once (exact: a float32 (chunk, R) block).
    shortlist: index hits re-scored per neighbour kept.

  Returns:
    nearest(start, stop) -> int32 (stop - start, k) neighbour slots (-1:
    none, and for invalid slots) and float32 (stop - start, k)
    similarities (-inf where none), best first.

  Raises:
    ValueError: k not below the number of valid regions, or an index of
      other descriptors.
  """
  descriptors, valid = np.asarray(descriptors), np.asarray(valid)
  region_index_lib.check_regions('descriptors', descriptors, valid)
  num_images, num_regions, dim = descriptors.shape
  if not 1 <= k < int(valid.sum()):
    raise ValueError(
      f'k must be in [1, valid regions={int(valid.sum())}), got {k}'
    )
  flat = descriptors.reshape(-1, dim)
  flat_valid = valid.reshape(-1)
  if region_index is not None and region_index.metadata['num_images'] != (
    num_images
  ):
    raise ValueError(
      f'the region index holds {region_index.metadata["num_images"]} '
      f'images, the descriptors {num_images}'
    )
  vectors = None if region_index is not None else jnp.asarray(flat, jnp.float32)

  def exact(start, stop):
    slots = np.arange(start, start + chunk) % flat.shape[0]  # pad by wrap
    top, found = _exact_block(
      np.asarray(flat[slots], np.float32),
      slots.astype(np.int32),
      vectors,
      jnp.asarray(flat_valid),
      k=k,
    )
    return np.asarray(found)[: stop - start], np.asarray(top)[: stop - start]

  def indexed(start, stop):
    count = stop - start
    found = np.full((count, k), -1, np.int32)
    similarity = np.full((count, k), -np.inf, np.float32)
    rows = np.nonzero(flat_valid[start:stop])[0]
    if not rows.size:
      return found, similarity
    queries = np.ascontiguousarray(flat[start + rows], np.float32)
    _, labels = region_index.index.search(
      queries,
      shortlist * (k + 1),
      params=index_search.search_parameters(region_index),
    )  # the index's nprobe / ef_search (FAISS's own default probes 1 list)
    hit = labels >= 0
    slots = np.where(
      hit,
      region_index.image_ids[np.maximum(labels, 0)] * num_regions
      + region_index.region_ids[np.maximum(labels, 0)],
      -1,
    )
    hit &= slots != (start + rows)[:, None]  # itself
    exact_scores = np.concatenate(
      [  # 64 rows at a time: a float32 (64, shortlist * (k + 1), D) block
        np.einsum(
          'cd,ckd->ck',
          queries[b : b + 64],
          np.asarray(flat[np.maximum(slots[b : b + 64], 0)], np.float32),
        )
        for b in range(0, rows.size, 64)
      ]
    )
    exact_scores = np.where(hit, exact_scores, -np.inf)
    order = np.argsort(-exact_scores, axis=1, kind='stable')[:, :k]
    similarity[rows] = np.take_along_axis(exact_scores, order, axis=1)
    found[rows] = np.where(
      np.isfinite(similarity[rows]),
      np.take_along_axis(slots, order, axis=1),
      -1,
    )
    return found, similarity

  def nearest(start, stop):
    outputs = [
      (exact if region_index is None else indexed)(
        begin, min(begin + chunk, stop)
      )
      for begin in range(start, stop, chunk)
    ]
    found = np.concatenate([o[0] for o in outputs])
    similarity = np.concatenate([o[1] for o in outputs])
    none = ~flat_valid[start:stop, None]  # invalid slots are isolated
    return np.where(none, -1, found), np.where(none, -np.inf, similarity)

  return nearest


def mutual_affinity(neighbours, similarities, *, gamma=DEFAULT_GAMMA):
  """Reciprocal kNN edges and their affinities (Iscen et al., Sec. 3).

  Edge (i, j) is kept when j is among the k nearest of i and i among those
  of j; its weight is max((s_ij + s_ji) / 2, 0)^gamma (the mean makes W
  exactly symmetric when float32 rounding made s_ij != s_ji). Host numpy:
  one sort of the R * k edges.

  Args:
    neighbours: int32 (R, k) neighbour slots, -1 padded.
    similarities: float32 (R, k) their similarities.
    gamma: affinity exponent.

  Returns:
    int32 (R, k) reciprocal neighbours (-1 elsewhere) and float32 (R, k)
    weights (0 elsewhere), the table of a RegionGraph.
  """
  num_slots, k = neighbours.shape
  rows = np.repeat(np.arange(num_slots, dtype=np.int64), k)
  columns = neighbours.reshape(-1).astype(np.int64)
  keys = np.where(columns >= 0, rows * num_slots + columns, -1)
  order = np.argsort(keys, kind='stable')
  sorted_keys = keys[order]
  reverse = np.where(columns >= 0, columns * num_slots + rows, -2)
  position = np.minimum(np.searchsorted(sorted_keys, reverse), keys.size - 1)
  mutual = sorted_keys[position] == reverse
  mean = 0.5 * (
    similarities.reshape(-1) + similarities.reshape(-1)[order[position]]
  )
  weights = np.where(mutual, np.maximum(mean, 0.0) ** gamma, 0.0)
  kept = (weights > 0).reshape(num_slots, k)
  return (
    np.where(kept, neighbours, -1).astype(np.int32),
    np.where(kept, weights.reshape(num_slots, k), 0.0).astype(np.float32),
  )
