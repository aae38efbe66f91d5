// Softmax attention of one (sequence, head) over its real keys only, forward and backward, float32.
// No torch headers: instantiated per instruction set in csrc/cpu/isa_kernels.cpp (target attributes).
//
// Every query row of the sequence (padded rows too, as a key-masked softmax would) attends to keys
// [0, n). Nothing reads a padded key, and every sum runs in an order fixed by n and the head size
// alone, so a real row's result is bit-identical whatever the padded length of its batch: the pruning
// scores do not depend on how the sample is cut into compute batches (a bf16 pass would amplify any
// rounding difference to a bf16 ulp at its next cast).
#pragma once

#include <cmath>
#include <cstdint>

#include "kprune/hd_math.h"

#define KPRUNE_ATTN_INLINE inline __attribute__((always_inline))

// AttnVec below is passed only between always-inline functions: no call ever uses its ABI.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace kprune {
namespace cpu {

// Scratch floats one head of up to n keys and head size d needs (either kernel, forward or backward).
KPRUNE_ATTN_INLINE int64_t attention_scratch(int64_t n, int64_t d) {
  const int64_t n16 = (n + 15) / 16 * 16;
  return 6 * n16 * d + 8 * n16 + 12 * d + 64;
}

// s[j] = scale * q . k_j for j < n, from kt = K^T [d, n].
template <int D>
KPRUNE_ATTN_INLINE void attention_scores(const float* __restrict q, const float* __restrict kt, int64_t n, int64_t d,
                                         float scale, float* __restrict s) {
  if (D > 0) d = D;
  for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
  for (int64_t c = 0; c < d; ++c) {
    const float a = q[c] * scale;
    const float* __restrict kc = kt + c * n;
    for (int64_t j = 0; j < n; ++j) s[j] += a * kc[j];
  }
}

// dst[c * n + j] = src[j * ld + c]: rows [n, d] (row stride ld) -> [d, n].
KPRUNE_ATTN_INLINE void transpose_rows(const float* __restrict src, int64_t ld, int64_t n, int64_t d,
                                       float* __restrict dst) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < d; ++c) dst[c * n + j] = src[j * ld + c];
}

// s[j] = exp(s[j] - m) for j < n and 0 for j in [n, width), m = max_{j < n} s[j] (n >= 1); returns the sum. Both
// reductions run in an order set by n and width alone.
KPRUNE_ATTN_INLINE float softmax_row(float* __restrict s, int64_t n, int64_t width, float* max_out) {
  float m = s[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  float l = 0.0f;
#pragma omp simd reduction(+ : l)
  for (int64_t j = 0; j < width; ++j) {
    s[j] = j < n ? math::exp_f(s[j] - m) : 0.0f;
    l += s[j];
  }
  *max_out = m;
  return l;
}

// q: [rows, d] (ldq); k, v: [n, d] (ldk); out: [rows, d] (ldo); lse: [rows] log-sum-exp of the scaled
// scores (the backward recomputes the probabilities from it). n == 0: zero output, lse 0.
template <int D>
KPRUNE_ATTN_INLINE void attention_head_forward(const float* __restrict q, int64_t ldq, const float* __restrict k,
                                               const float* __restrict v, int64_t ldk, int64_t rows, int64_t n,
                                               int64_t d, float scale, float* __restrict out, int64_t ldo,
                                               float* __restrict lse, float* __restrict scratch) {
  if (D > 0) d = D;
  float* __restrict kt = scratch;   // [d, n]
  float* __restrict p = kt + n * d;  // [n]
  transpose_rows(k, ldk, n, d, kt);
  for (int64_t i = 0; i < rows; ++i) {
    float* __restrict o = out + i * ldo;
    for (int64_t c = 0; c < d; ++c) o[c] = 0.0f;
    lse[i] = 0.0f;
    if (n == 0) continue;
    attention_scores<D>(q + i * ldq, kt, n, d, scale, p);
    float m;
    const float l = softmax_row(p, n, n, &m);
    for (int64_t j = 0; j < n; ++j) {
      const float w = p[j];
      const float* __restrict vj = v + j * ldk;
      for (int64_t c = 0; c < d; ++c) o[c] += w * vj[c];
    }
    const float inv = 1.0f / l;
    for (int64_t c = 0; c < d; ++c) o[c] *= inv;
    lse[i] = m + std::log(l);
  }
}

// The backward of attention_head_forward from grad_out [rows, d] (ldo, as out): dq [rows, d] (ldq_out),
// dk, dv [n, d] (ld_kv_out; only rows < n are written).
template <int D>
KPRUNE_ATTN_INLINE void attention_head_backward(const float* __restrict q, int64_t ldq, const float* __restrict k,
                                                const float* __restrict v, int64_t ldk, const float* __restrict out,
                                                const float* __restrict grad_out, int64_t ldo,
                                                const float* __restrict lse, int64_t rows, int64_t n, int64_t d,
                                                float scale, float* __restrict dq, int64_t ldq_out,
                                                float* __restrict dk, float* __restrict dv, int64_t ld_kv_out,
                                                float* __restrict scratch) {
  if (D > 0) d = D;
  float* __restrict kt = scratch;        // [d, n]
  float* __restrict vt = kt + n * d;     // [d, n]
  float* __restrict dk_acc = vt + n * d;  // [n, d]
  float* __restrict dv_acc = dk_acc + n * d;
  float* __restrict p = dv_acc + n * d;  // [n]
  float* __restrict ds = p + n;          // [n]
  transpose_rows(k, ldk, n, d, kt);
  transpose_rows(v, ldk, n, d, vt);
  for (int64_t t = 0; t < n * d; ++t) dk_acc[t] = dv_acc[t] = 0.0f;
  for (int64_t i = 0; i < rows; ++i) {
    float* __restrict dqi = dq + i * ldq_out;
    for (int64_t c = 0; c < d; ++c) dqi[c] = 0.0f;
    if (n == 0) continue;
    const float* __restrict qi = q + i * ldq;
    const float* __restrict go = grad_out + i * ldo;
    const float* __restrict oi = out + i * ldo;
    attention_scores<D>(qi, kt, n, d, scale, p);
    const float shift = lse[i];
    for (int64_t j = 0; j < n; ++j) p[j] = math::exp_f(p[j] - shift);
    float delta = 0.0f;   // sum_c grad_out * out = sum_j p_j dp_j
    for (int64_t c = 0; c < d; ++c) delta += go[c] * oi[c];
    attention_scores<D>(go, vt, n, d, 1.0f, ds);   // dp_j = grad_out . v_j
    for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - delta) * scale;
    for (int64_t j = 0; j < n; ++j) {
      const float w = ds[j], pj = p[j];
      const float* __restrict kj = k + j * ldk;
      float* __restrict dkj = dk_acc + j * d;
      float* __restrict dvj = dv_acc + j * d;
      for (int64_t c = 0; c < d; ++c) {
        dqi[c] += w * kj[c];
        dkj[c] += w * qi[c];
        dvj[c] += pj * go[c];
      }
    }
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < d; ++c) {
      dk[j * ld_kv_out + c] = dk_acc[j * d + c];
      dv[j * ld_kv_out + c] = dv_acc[j * d + c];
    }
}

// ---- blocked kernels for a compile-time head size (32, 64): 4 query rows x 16 keys per register tile ----
// Keys are packed and zero-padded to a multiple of 16 and query rows to a multiple of 4, so every row and
// every key goes through the same instructions whatever the block it falls in.

constexpr int64_t kAttnRows = 4;
constexpr int64_t kAttnKeys = 16;

KPRUNE_ATTN_INLINE int64_t keys_padded(int64_t n) { return (n + kAttnKeys - 1) / kAttnKeys * kAttnKeys; }

// 16 floats: one AVX-512 register, two AVX2 ones, four SSE ones (GCC vector extension, lowered per target).
typedef float AttnVec __attribute__((vector_size(64)));

KPRUNE_ATTN_INLINE AttnVec vload(const float* p) {
  AttnVec v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
KPRUNE_ATTN_INLINE void vstore(float* p, const AttnVec& v) { __builtin_memcpy(p, &v, sizeof(v)); }

// s[r * n16 + j] = sum_c a[r * D + c] * bt[c * n16 + j] for the 4 rows of a and all n16 padded keys.
template <int D>
KPRUNE_ATTN_INLINE void tile_scores(const float* __restrict a, const float* __restrict bt, int64_t n16,
                                    float* __restrict s) {
  for (int64_t j0 = 0; j0 < n16; j0 += kAttnKeys) {
    AttnVec acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
#pragma GCC unroll 8
    for (int c = 0; c < D; ++c) {
      const AttnVec b = vload(bt + c * n16 + j0);
      acc0 += a[c] * b;
      acc1 += a[D + c] * b;
      acc2 += a[2 * D + c] * b;
      acc3 += a[3 * D + c] * b;
    }
    vstore(s + j0, acc0);
    vstore(s + n16 + j0, acc1);
    vstore(s + 2 * n16 + j0, acc2);
    vstore(s + 3 * n16 + j0, acc3);
  }
}

// o[r * D + c] = sum_{j < n} w[r * n16 + j] * rows[j * D + c] for the 4 rows of w.
template <int D>
KPRUNE_ATTN_INLINE void tile_combine(const float* __restrict w, const float* __restrict rows, int64_t n, int64_t n16,
                                     float* __restrict o) {
  constexpr int V = D / 16;
  AttnVec acc[kAttnRows][V] = {};
  for (int64_t j = 0; j < n; ++j) {
    AttnVec rj[V];
#pragma GCC unroll 4
    for (int cc = 0; cc < V; ++cc) rj[cc] = vload(rows + j * D + cc * 16);
#pragma GCC unroll 4
    for (int r = 0; r < kAttnRows; ++r) {
      const float x = w[r * n16 + j];
#pragma GCC unroll 4
      for (int cc = 0; cc < V; ++cc) acc[r][cc] += x * rj[cc];
    }
  }
  for (int r = 0; r < kAttnRows; ++r)
    for (int cc = 0; cc < V; ++cc) vstore(o + r * D + cc * 16, acc[r][cc]);
}

// acc[j * D + c] += sum_r w[r * n16 + j] * x[r * D + c] for keys j < n (the 4 rows in order).
template <int D>
KPRUNE_ATTN_INLINE void tile_accumulate_keys(const float* __restrict w, const float* __restrict x, int64_t n,
                                             int64_t n16, float* __restrict acc) {
  constexpr int V = D / 16;
  AttnVec xr[kAttnRows][V];
  for (int r = 0; r < kAttnRows; ++r)
    for (int cc = 0; cc < V; ++cc) xr[r][cc] = vload(x + r * D + cc * 16);
  for (int64_t j = 0; j < n; ++j) {
#pragma GCC unroll 4
    for (int cc = 0; cc < V; ++cc) {
      AttnVec a = vload(acc + j * D + cc * 16);
      a += w[j] * xr[0][cc];
      a += w[n16 + j] * xr[1][cc];
      a += w[2 * n16 + j] * xr[2][cc];
      a += w[3 * n16 + j] * xr[3][cc];
      vstore(acc + j * D + cc * 16, a);
    }
  }
}

// dst[r * D + c] = factor * src[(i0 + r) * ld + c] for rows below `rows`, 0 beyond.
template <int D>
KPRUNE_ATTN_INLINE void load_tile(const float* __restrict src, int64_t ld, int64_t i0, int64_t rows, float factor,
                                  float* __restrict dst) {
  for (int64_t r = 0; r < kAttnRows; ++r)
    for (int c = 0; c < D; ++c) dst[r * D + c] = i0 + r < rows ? factor * src[(i0 + r) * ld + c] : 0.0f;
}

// Keys [n, D] (ld) packed as t [D, n16], zero-padded.
template <int D>
KPRUNE_ATTN_INLINE void pack_transposed(const float* __restrict src, int64_t ld, int64_t n, int64_t n16,
                                        float* __restrict t) {
  for (int64_t j = 0; j < n16; ++j)
    for (int c = 0; c < D; ++c) t[c * n16 + j] = j < n ? src[j * ld + c] : 0.0f;
}

// Keys [n, D] (ld) packed as rows [n, D].
template <int D>
KPRUNE_ATTN_INLINE void pack_rows(const float* __restrict src, int64_t ld, int64_t n, float* __restrict rows) {
  for (int64_t j = 0; j < n; ++j)
    for (int c = 0; c < D; ++c) rows[j * D + c] = src[j * ld + c];
}

// Row softmax of the 4 score rows over keys < n, unnormalised: p = exp(s - m), zero beyond n; per row the
// sum of p and m + log(sum).
KPRUNE_ATTN_INLINE void tile_softmax(float* __restrict s, int64_t n, int64_t n16, float* __restrict lse,
                                     float* __restrict sum) {
  for (int64_t r = 0; r < kAttnRows; ++r) {
    float m;
    sum[r] = softmax_row(s + r * n16, n, n16, &m);
    lse[r] = m + std::log(sum[r]);
  }
}

template <int D>
KPRUNE_ATTN_INLINE void attention_tiled_forward(const float* __restrict q, int64_t ldq, const float* __restrict k,
                                                const float* __restrict v, int64_t ldk, int64_t rows, int64_t n,
                                                float scale, float* __restrict out, int64_t ldo, float* __restrict lse,
                                                float* __restrict scratch) {
  const int64_t n16 = keys_padded(n);
  float* __restrict kt = scratch;                   // [D, n16]
  float* __restrict vr = kt + D * n16;              // [n16, D]
  float* __restrict s = vr + D * n16;               // [4, n16]
  float* __restrict qb = s + kAttnRows * n16;       // [4, D]
  float* __restrict ob = qb + kAttnRows * D;        // [4, D]
  float tile_lse[kAttnRows], tile_sum[kAttnRows];
  pack_transposed<D>(k, ldk, n, n16, kt);
  pack_rows<D>(v, ldk, n, vr);
  for (int64_t i0 = 0; i0 < rows; i0 += kAttnRows) {
    const int64_t count = rows - i0 < kAttnRows ? rows - i0 : kAttnRows;
    if (n == 0) {
      for (int64_t r = 0; r < count; ++r) {
        for (int c = 0; c < D; ++c) out[(i0 + r) * ldo + c] = 0.0f;
        lse[i0 + r] = 0.0f;
      }
      continue;
    }
    load_tile<D>(q, ldq, i0, rows, scale, qb);
    tile_scores<D>(qb, kt, n16, s);
    tile_softmax(s, n, n16, tile_lse, tile_sum);
    tile_combine<D>(s, vr, n, n16, ob);
    for (int64_t r = 0; r < count; ++r) {
      const float inv = 1.0f / tile_sum[r];
      for (int c = 0; c < D; ++c) out[(i0 + r) * ldo + c] = ob[r * D + c] * inv;
      lse[i0 + r] = tile_lse[r];
    }
  }
}

template <int D>
KPRUNE_ATTN_INLINE void attention_tiled_backward(const float* __restrict q, int64_t ldq, const float* __restrict k,
                                                 const float* __restrict v, int64_t ldk, const float* __restrict out,
                                                 const float* __restrict grad_out, int64_t ldo,
                                                 const float* __restrict lse, int64_t rows, int64_t n, float scale,
                                                 float* __restrict dq, int64_t ldq_out, float* __restrict dk,
                                                 float* __restrict dv, int64_t ld_kv_out, float* __restrict scratch) {
  const int64_t n16 = keys_padded(n);
  float* __restrict kt = scratch;                   // [D, n16]
  float* __restrict kr = kt + D * n16;              // [n16, D]
  float* __restrict vt = kr + D * n16;              // [D, n16]
  float* __restrict dk_acc = vt + D * n16;          // [n16, D]
  float* __restrict dv_acc = dk_acc + D * n16;      // [n16, D]
  float* __restrict p = dv_acc + D * n16;           // [4, n16]
  float* __restrict ds = p + kAttnRows * n16;       // [4, n16]
  float* __restrict qb = ds + kAttnRows * n16;      // [4, D] scaled queries
  float* __restrict gb = qb + kAttnRows * D;        // [4, D] grad_out
  float* __restrict ob = gb + kAttnRows * D;        // [4, D] out, then grad_q
  pack_transposed<D>(k, ldk, n, n16, kt);
  pack_rows<D>(k, ldk, n, kr);
  pack_transposed<D>(v, ldk, n, n16, vt);
  for (int64_t t = 0; t < n16 * D; ++t) dk_acc[t] = dv_acc[t] = 0.0f;
  for (int64_t i0 = 0; i0 < rows; i0 += kAttnRows) {
    const int64_t count = rows - i0 < kAttnRows ? rows - i0 : kAttnRows;
    if (n == 0) {
      for (int64_t r = 0; r < count; ++r)
        for (int c = 0; c < D; ++c) dq[(i0 + r) * ldq_out + c] = 0.0f;
      continue;
    }
    load_tile<D>(q, ldq, i0, rows, scale, qb);
    load_tile<D>(grad_out, ldo, i0, rows, 1.0f, gb);
    load_tile<D>(out, ldo, i0, rows, 1.0f, ob);
    tile_scores<D>(qb, kt, n16, p);
    tile_scores<D>(gb, vt, n16, ds);   // dp = grad_out . v_j
    for (int64_t r = 0; r < kAttnRows; ++r) {
      const float shift = i0 + r < rows ? lse[i0 + r] : 0.0f;
      float delta = 0.0f;   // sum_c grad_out * out = sum_j p_j dp_j
      for (int c = 0; c < D; ++c) delta += gb[r * D + c] * ob[r * D + c];
      float* __restrict pr = p + r * n16;
      float* __restrict dr = ds + r * n16;
      for (int64_t j = 0; j < n16; ++j) {
        const float pj = j < n ? math::exp_f(pr[j] - shift) : 0.0f;
        pr[j] = pj;
        dr[j] = pj * (dr[j] - delta);
      }
    }
    tile_combine<D>(ds, kr, n, n16, ob);   // grad_q / scale
    for (int64_t r = 0; r < count; ++r)
      for (int c = 0; c < D; ++c) dq[(i0 + r) * ldq_out + c] = ob[r * D + c] * scale;
    tile_accumulate_keys<D>(ds, qb, n, n16, dk_acc);
    tile_accumulate_keys<D>(p, gb, n, n16, dv_acc);
  }
  for (int64_t j = 0; j < n; ++j)
    for (int c = 0; c < D; ++c) {
      dk[j * ld_kv_out + c] = dk_acc[j * D + c];
      dv[j * ld_kv_out + c] = dv_acc[j * D + c];
    }
}

// Head-size dispatch: 32 and 64 (MiniLM, BERT-base and -large) with the size a compile-time constant.
KPRUNE_ATTN_INLINE void attention_forward_any(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldk,
                                              int64_t rows, int64_t n, int64_t d, float scale, float* out, int64_t ldo,
                                              float* lse, float* scratch) {
  if (d == 32) attention_tiled_forward<32>(q, ldq, k, v, ldk, rows, n, scale, out, ldo, lse, scratch);
  else if (d == 64) attention_tiled_forward<64>(q, ldq, k, v, ldk, rows, n, scale, out, ldo, lse, scratch);
  else attention_head_forward<0>(q, ldq, k, v, ldk, rows, n, d, scale, out, ldo, lse, scratch);
}

KPRUNE_ATTN_INLINE void attention_backward_any(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldk,
                                               const float* out, const float* grad_out, int64_t ldo, const float* lse,
                                               int64_t rows, int64_t n, int64_t d, float scale, float* dq,
                                               int64_t ldq_out, float* dk, float* dv, int64_t ld_kv_out,
                                               float* scratch) {
  if (d == 32)
    attention_tiled_backward<32>(q, ldq, k, v, ldk, out, grad_out, ldo, lse, rows, n, scale, dq, ldq_out, dk, dv,
                                 ld_kv_out, scratch);
  else if (d == 64)
    attention_tiled_backward<64>(q, ldq, k, v, ldk, out, grad_out, ldo, lse, rows, n, scale, dq, ldq_out, dk, dv,
                                 ld_kv_out, scratch);
  else
    attention_head_backward<0>(q, ldq, k, v, ldk, out, grad_out, ldo, lse, rows, n, d, scale, dq, ldq_out, dk, dv,
                               ld_kv_out, scratch);
}

}  // namespace cpu
}  // namespace kprune
