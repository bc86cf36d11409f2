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


def mutual_affinity(
  neighbours, similarities, *, gamma=DEFAULT_GAMMA, chunk=1 << 16
):
  """Reciprocal kNN edges and their affinities (Iscen et al., Sec. 3).

  Edge (i, j) is kept when j is among the k nearest of i and i among those
  of j; its weight is max((s_ij + s_ji) / 2, 0)^gamma (the mean makes W
  exactly symmetric when float32 rounding made s_ij != s_ji). Host numpy,
  `chunk` rows at a time: each row's neighbours are sorted once, then i is
  looked up in row j by a binary search, so beyond the input and output
  the memory is an int32 and an int16 (R, k) table (1M images x 8 regions
  at k = 50: 2.4 GB), not the R * k int64 keys of a global sort.

  Args:
    neighbours: int32 (R, k) neighbour slots, -1 padded.
    similarities: float32 (R, k) their similarities.
    gamma: affinity exponent.
    chunk: rows handled at once.

  Returns:
    int32 (R, k) reciprocal neighbours (-1 elsewhere) and float32 (R, k)
    weights (0 elsewhere), the table of a RegionGraph.
  """
  num_slots, k = neighbours.shape
  ascending = np.empty((num_slots, k), np.int32)  # each row's slots, sorted
  position_of = np.empty((num_slots, k), np.int16 if k < 2**15 else np.int32)
  for start in range(0, num_slots, chunk):
    rows = slice(start, start + chunk)
    order = np.argsort(neighbours[rows], axis=1, kind='stable')
    position_of[rows] = order
    ascending[rows] = np.take_along_axis(neighbours[rows], order, axis=1)
  mutual_neighbours = np.full((num_slots, k), -1, np.int32)
  weights = np.zeros((num_slots, k), np.float32)
  for start in range(0, num_slots, chunk):
    rows = slice(start, min(start + chunk, num_slots))
    columns = neighbours[rows]
    itself = np.arange(rows.start, rows.stop, dtype=np.int32)[:, None]
    other = np.maximum(columns, 0)
    low = np.zeros(columns.shape, np.int32)  # first place of row j >= i
    high = np.full(columns.shape, k, np.int32)
    for _ in range(k.bit_length()):
      middle = (low + high) // 2
      below = ascending[other, np.minimum(middle, k - 1)] < itself
      searching = low < high
      low = np.where(searching & below, middle + 1, low)
      high = np.where(searching & ~below, middle, high)
    place = np.minimum(low, k - 1)
    mutual = (columns >= 0) & (ascending[other, place] == itself)
    back = similarities[other, position_of[other, place]]  # s_ji
    mean = 0.5 * (similarities[rows] + back)
    weight = np.where(mutual, np.maximum(mean, 0.0) ** gamma, 0.0)
    kept = weight > 0
    mutual_neighbours[rows] = np.where(kept, columns, -1)
    weights[rows] = np.where(kept, weight, 0.0)
  return mutual_neighbours, weights
