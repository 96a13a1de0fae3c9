// What the float32 NHWC CPU kernels (nhwc_float_cpu.cpp, bn_train_cpu.cpp) share: the run-time ISA choice
// between their AVX2+FMA and baseline copies, and the parallel_for grain.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
// Each kernel file compiles its row kernels twice: under #pragma GCC target("avx2,fma") and for the baseline.
#define RESNET_FAST_HAVE_AVX2_COPY 1
#endif

namespace resnet_fast {

// Whether this CPU runs the AVX2+FMA copies (checked once).
inline bool cpu_has_avx2_fma() {
#ifdef RESNET_FAST_HAVE_AVX2_COPY
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Rows of C channels per parallel task: about 16k elements.
inline int64_t rows_per_task(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)); }

}  // namespace resnet_fast
