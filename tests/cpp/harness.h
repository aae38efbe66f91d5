// A tiny assert harness for the C++ tests (no gtest dependency).
#pragma once

#include <cmath>
#include <cstdio>

namespace kprune_test {
inline int& failures() {
  static int n = 0;
  return n;
}
inline bool report_failure() { return failures() <= 20; }  // print the first 20 only
inline int& checks() {
  static int n = 0;
  return n;
}
}  // namespace kprune_test

#define KP_CHECK(cond)                                                          \
  do {                                                                          \
    ++kprune_test::checks();                                                    \
    if (!(cond)) {                                                              \
      ++kprune_test::failures();                                                \
      if (kprune_test::report_failure()) std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                           \
  } while (0)

#define KP_CHECK_NEAR(a, b, tol)                                                                       \
  do {                                                                                                 \
    ++kprune_test::checks();                                                                           \
    const double kp_a = double(a), kp_b = double(b);                                                   \
    if (!(std::fabs(kp_a - kp_b) <= double(tol))) {                                                    \
      ++kprune_test::failures();                                                                       \
      if (kprune_test::report_failure()) std::fprintf(stderr, "%s:%d: %s = %.9g vs %s = %.9g (tol %g)\n", __FILE__, __LINE__, #a, kp_a, #b, kp_b, \
                   double(tol));                                                                       \
    }                                                                                                  \
  } while (0)

#define KP_REPORT()                                                                                 \
  (std::printf("%d checks, %d failures\n", kprune_test::checks(), kprune_test::failures()),         \
   kprune_test::failures() == 0 ? 0 : 1)
