// The deterministic reductions of the CUDA kernels (kprune/hd_reduce.h), run on the host against
// direct sums: chunked group sums of squares for every chunk size, and the fixed-order block sum.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "harness.h"
#include "kprune/hd_reduce.h"

using namespace kprune::math;

// sum_g (sum_{t in g} v[t])^2 directly, in double
static double direct_group_squares(const std::vector<int64_t>& offsets, const std::vector<double>& v) {
  double total = 0.0;
  for (size_t g = 0; g + 1 < offsets.size(); ++g) {
    double s = 0.0;
    for (int64_t t = offsets[g]; t < offsets[g + 1]; ++t) s += v[t];
    total += s * s;
  }
  return total;
}

// The GPU scheme on the host: chunks of `chunk` tokens summarised alone, then folded in order.
template <typename A>
static A chunked_group_squares(const std::vector<int64_t>& offsets, const std::vector<A>& v, int64_t chunk) {
  const int64_t groups = int64_t(offsets.size()) - 1, lo = offsets[0], hi = offsets[groups];
  GroupSquareFold<A> fold;
  for (int64_t t0 = lo; t0 < hi; t0 += chunk) {
    const int64_t t1 = t0 + chunk < hi ? t0 + chunk : hi;
    const ChunkSummary<A> s = summarise_chunk<A>(offsets.data(), groups, t0, t1, [&](int64_t t) { return v[t]; });
    fold_chunk(fold, find_group(offsets.data(), groups, t0), find_group(offsets.data(), groups, t1 - 1), s);
  }
  return fold.total();
}

static void test_group_squares_any_chunking() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> value(-1.0, 1.0);
  std::uniform_int_distribution<int> length(0, 9);  // empty groups included
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int64_t> offsets = {int64_t(trial % 3)};  // tokens before offsets[0] are not counted
    const int groups = 1 + trial % 12;
    for (int g = 0; g < groups; ++g) offsets.push_back(offsets.back() + length(rng));
    std::vector<double> v(offsets.back() + 3);
    for (double& x : v) x = value(rng);
    const double expected = direct_group_squares(offsets, v);
    for (int64_t chunk : {1, 2, 3, 5, 8, 64}) {
      KP_CHECK_NEAR(chunked_group_squares<double>(offsets, v, chunk), expected, 1e-12);
    }
    std::vector<float> vf(v.begin(), v.end());
    const float once = chunked_group_squares<float>(offsets, vf, 3);
    KP_CHECK(once == chunked_group_squares<float>(offsets, vf, 3));  // same inputs, same bits
    KP_CHECK_NEAR(once, expected, 1e-4 * (1.0 + expected));
  }
  // one long group across many chunks, and a single token
  std::vector<int64_t> one = {0, 10};
  std::vector<double> ones(10, 1.0);
  KP_CHECK_NEAR(chunked_group_squares<double>(one, ones, 3), 100.0, 0.0);
  std::vector<int64_t> single = {4, 5};
  std::vector<double> v(6, 2.0);
  KP_CHECK_NEAR(chunked_group_squares<double>(single, v, 256), 4.0, 0.0);
}

static void test_block_sum() {
  const int64_t rows = 5, ld = 7;
  std::vector<double> p(rows * ld);
  for (int64_t i = 0; i < rows * ld; ++i) p[i] = std::sin(double(i));
  for (int64_t c0 = 0; c0 < ld; ++c0)
    for (int64_t c1 = c0; c1 <= ld; ++c1) {
      double expected = 0.0;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = 0; r < rows; ++r) expected += p[r * ld + c];
      KP_CHECK_NEAR(block_sum(p.data(), rows, ld, c0, c1), expected, 1e-12);
    }
  KP_CHECK(block_sum(p.data(), 0, ld, 0, ld) == 0.0);
}

int main() {
  test_group_squares_any_chunking();
  test_block_sum();
  return KP_REPORT();
}
