// Deterministic reductions shared by the CUDA kernels and the C++ tests (host/device, no torch).
// The GPU kernels write per-block partial sums to scratch buffers and combine them with these
// functions in a fixed order, instead of float atomics (whose order, and so whose rounding, changes
// from run to run). Same inputs, same bits.
#pragma once

#include <cstdint>

#include "kprune/hd_math.h"

namespace kprune {
namespace math {

// Sum over groups of the squared group sums, for values that arrive in token order (group ids never
// decrease): push(g, v) adds v to group g; a group's sum is squared once, when the next group starts.
template <typename A>
struct GroupSquareFold {
  int64_t group;
  A open;    // sum of the current group so far
  A closed;  // sum of the squares of the finished groups
  KPRUNE_HD GroupSquareFold() : group(-1), open(A(0)), closed(A(0)) {}
  KPRUNE_HD void push(int64_t g, A v) {
    if (g != group) {
      closed += open * open;
      group = g;
      open = A(0);
    }
    open += v;
  }
  KPRUNE_HD A total() const { return closed + open * open; }
};

// What one chunk of tokens [t0, t1) contributes for one column: the partial sum of its first (head)
// group, which may have begun in an earlier chunk; the squared sums of the groups wholly inside it;
// and the partial sum of its last (tail) group, which may go on in a later chunk (0 when the chunk
// holds one group). Chunks are then combined in token order by fold_chunk.
template <typename A>
struct ChunkSummary {
  A head, inner, tail;
};

// value(t) is the chunk's value at token t (act * grad for the importance); offsets: [groups + 1].
template <typename A, typename Value>
KPRUNE_HD ChunkSummary<A> summarise_chunk(const int64_t* offsets, int64_t groups, int64_t t0, int64_t t1,
                                          Value value) {
  int64_t g = find_group(offsets, groups, t0);
  const int64_t head_group = g;
  A head = A(0);
  GroupSquareFold<A> rest;
  for (int64_t t = t0; t < t1; ++t) {
    while (offsets[g + 1] <= t) ++g;
    const A v = value(t);
    if (g == head_group) {
      head += v;
    } else {
      rest.push(g, v);
    }
  }
  return {head, rest.closed, rest.open};
}

// Adds a chunk (its head and tail group ids, from find_group of its first and last token) to the fold.
template <typename A>
KPRUNE_HD void fold_chunk(GroupSquareFold<A>& fold, int64_t head_group, int64_t tail_group,
                          const ChunkSummary<A>& chunk) {
  fold.push(head_group, chunk.head);
  if (tail_group != head_group) {
    fold.closed += chunk.inner;
    fold.push(tail_group, chunk.tail);
  }
}

// sum over r < rows, c0 <= c < c1 of p[r * ld + c], rows outer and columns inner.
template <typename A>
KPRUNE_HD A block_sum(const A* p, int64_t rows, int64_t ld, int64_t c0, int64_t c1) {
  A s = A(0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) s += p[r * ld + c];
  return s;
}

}  // namespace math
}  // namespace kprune
