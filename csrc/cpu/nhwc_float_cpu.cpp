// Vectorized CPU kernels of the native primitives for float32 channels_last (NHWC) activations,
// the layout resnet_fast's models train in: nhwc_channel_stats, nhwc_bn_act, nhwc_bn_act_backward
// (csrc/ops.cpp) compute exactly what channel_stats, bn_act and bn_act_backward compute.
//
// An NHWC activation is N*H*W rows of C channels. The channel loops (nhwc_float_kernels.inc) are
// compiled twice, for AVX2+FMA and for the baseline ISA, and the copy the CPU supports runs; the
// general kernels (bn_act_cpu.cpp) keep double math per element, which does not vectorize.
// Reductions: float sums over blocks of 32 rows, added into double per (thread, channel), combined
// over threads in a fixed order (deterministic for a given thread count).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../bn_act_checks.h"
#include "cpu_dispatch.h"

#include <cstdint>
#include <vector>

namespace resnet_fast {
namespace nhwc_float {

// Per-channel coefficients are C-length float arrays (defaults filled in by the caller).
struct ApplyArgs {
  const float *x, *res;  // res null: no residual term
  float* out;
  const float *m, *a, *b, *rm, *ra, *rb;
  int64_t C;
  bool relu;
};

struct BackwardArgs {
  const float *grad, *out, *x, *res;  // res null: no residual
  float *dx, *dres;                   // null: not requested
  const float *m, *a, *rm, *ra;
  int64_t C;
  bool relu;
};

#if defined(__clang__)
#define RESNET_FAST_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define RESNET_FAST_IVDEP _Pragma("GCC ivdep")
#else
#define RESNET_FAST_IVDEP
#endif

#ifdef RESNET_FAST_HAVE_AVX2_COPY
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "nhwc_float_kernels.inc"
#pragma GCC pop_options
}  // namespace avx2
#endif

namespace base {
#include "nhwc_float_kernels.inc"
}  // namespace base

void stats_rows(const float* y, int64_t r0, int64_t r1, int64_t C, const float* pilot, double* acc, float* tmp) {
#ifdef RESNET_FAST_HAVE_AVX2_COPY
  if (cpu_has_avx2_fma()) return avx2::stats_rows(y, r0, r1, C, pilot, acc, tmp);
#endif
  base::stats_rows(y, r0, r1, C, pilot, acc, tmp);
}

void apply(const ApplyArgs& p, int64_t r0, int64_t r1) {
#ifdef RESNET_FAST_HAVE_AVX2_COPY
  if (cpu_has_avx2_fma()) return avx2::apply(p, r0, r1);
#endif
  base::apply(p, r0, r1);
}

void backward(const BackwardArgs& p, int64_t r0, int64_t r1, double* acc, float* tmp) {
#ifdef RESNET_FAST_HAVE_AVX2_COPY
  if (cpu_has_avx2_fma()) return avx2::backward(p, r0, r1, acc, tmp);
#endif
  base::backward(p, r0, r1, acc, tmp);
}

Layout check_nhwc_float(const at::Tensor& t, const char* op) {
  const Layout l = layout_of(t, "x");
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && l.nhwc, op,
              ": expects a float32 channels_last CPU activation, got ", t.scalar_type(), " on ", t.device(),
              l.nhwc ? "" : " (contiguous NCHW)");
  return l;
}

std::vector<float> vec_or(const std::optional<at::Tensor>& t, int64_t C, float fill) {
  if (!t) return std::vector<float>(C, fill);
  const float* p = t->const_data_ptr<float>();
  return std::vector<float>(p, p + C);
}


std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& y) {
  const Layout l = check_nhwc_float(y, "nhwc_channel_stats");
  const int64_t C = l.C, rows = l.N * l.HW;
  TORCH_CHECK(rows > 0, "channel_stats: y has no elements per channel");
  const float* yp = y.const_data_ptr<float>();
  // Shifted sums (by each channel's first element): no cancellation when |mean| >> std.
  const std::vector<float> pilot(yp, yp + C);
  const int threads = at::get_num_threads();
  std::vector<double> acc(threads * 2 * C, 0.0);
  at::parallel_for(0, rows, rows_per_task(C), [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(2 * C);
    stats_rows(yp, r0, r1, C, pilot.data(), &acc[at::get_thread_num() * 2 * C], tmp.data());
  });
  at::Tensor mean = at::empty({C}, y.options());
  at::Tensor var = at::empty({C}, y.options());
  float* mp = mean.mutable_data_ptr<float>();
  float* vp = var.mutable_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int t = 0; t < threads; ++t) s1 += acc[t * 2 * C + c], s2 += acc[t * 2 * C + C + c];
    const double mu = s1 / rows;
    mp[c] = static_cast<float>(pilot[c] + mu);
    vp[c] = static_cast<float>(std::max(0.0, s2 / rows - mu * mu));
  }
  return {mean, var};
}

at::Tensor bn_act(const at::Tensor& x, const std::optional<at::Tensor>& mean, const at::Tensor& scale,
                  const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                  const std::optional<at::Tensor>& res_mean, const std::optional<at::Tensor>& res_scale,
                  const std::optional<at::Tensor>& res_bias, bool relu) {
  const Layout l = check_bn_act_args(x, mean, scale, bias, residual, res_mean, res_scale, res_bias);
  check_nhwc_float(x, "nhwc_bn_act");
  const int64_t C = l.C;
  at::Tensor out = at::empty_like(x);
  const auto m = vec_or(mean, C, 0.f), a = vec_or(scale, C, 0.f), b = vec_or(bias, C, 0.f);
  const auto rm = vec_or(res_mean, C, 0.f), ra = vec_or(res_scale, C, 1.f), rb = vec_or(res_bias, C, 0.f);
  const ApplyArgs p{x.const_data_ptr<float>(), residual ? residual->const_data_ptr<float>() : nullptr,
                    out.mutable_data_ptr<float>(), m.data(), a.data(), b.data(), rm.data(), ra.data(), rb.data(),
                    C, relu};
  at::parallel_for(0, l.N * l.HW, rows_per_task(C), [&](int64_t r0, int64_t r1) { apply(p, r0, r1); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& mean,
    const at::Tensor& scale, const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_mean,
    const std::optional<at::Tensor>& res_scale, bool relu, std::array<bool, 5> mask) {
  const Layout l = check_bn_act_backward_args(grad_out, out, x, mean, scale, residual, res_mean, res_scale, mask);
  check_nhwc_float(x, "nhwc_bn_act_backward");
  const int64_t C = l.C, rows = l.N * l.HW;
  at::Tensor dx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dscale = at::empty({mask[1] ? C : 0}, scale.options());
  at::Tensor dbias = at::empty({mask[2] ? C : 0}, scale.options());
  at::Tensor dres = mask[3] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dres_scale = at::empty({mask[4] ? C : 0}, scale.options());
  const bool reduce = mask[1] || mask[2] || mask[4];
  const auto m = vec_or(mean, C, 0.f), a = vec_or(scale, C, 0.f);
  const auto rm = vec_or(res_mean, C, 0.f), ra = vec_or(res_scale, C, 1.f);
  const BackwardArgs p{grad_out.const_data_ptr<float>(), out.const_data_ptr<float>(), x.const_data_ptr<float>(),
                       residual ? residual->const_data_ptr<float>() : nullptr,
                       mask[0] ? dx.mutable_data_ptr<float>() : nullptr,
                       mask[3] ? dres.mutable_data_ptr<float>() : nullptr, m.data(), a.data(), rm.data(), ra.data(),
                       C, relu};
  const int threads = at::get_num_threads();
  std::vector<double> acc(reduce ? threads * 3 * C : 0, 0.0);
  at::parallel_for(0, rows, rows_per_task(C), [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(reduce ? 3 * C : 0);
    backward(p, r0, r1, reduce ? &acc[at::get_thread_num() * 3 * C] : nullptr, tmp.data());
  });
  if (reduce) {
    for (int64_t c = 0; c < C; ++c) {
      double s0 = 0, s1 = 0, s2 = 0;
      for (int t = 0; t < threads; ++t) {
        const double* q = &acc[t * 3 * C];
        s0 += q[c], s1 += q[C + c], s2 += q[2 * C + c];
      }
      if (mask[1]) dscale.mutable_data_ptr<float>()[c] = static_cast<float>(s1);
      if (mask[2]) dbias.mutable_data_ptr<float>()[c] = static_cast<float>(s0);
      if (mask[4]) dres_scale.mutable_data_ptr<float>()[c] = static_cast<float>(s2);
    }
  }
  return {dx, dscale, dbias, dres, dres_scale};
}

}  // namespace nhwc_float

TORCH_LIBRARY_IMPL(resnet_fast_C, CPU, m) {
  m.impl("nhwc_channel_stats", &nhwc_float::channel_stats);
  m.impl("nhwc_bn_act", &nhwc_float::bn_act);
  m.impl("nhwc_bn_act_backward", &nhwc_float::bn_act_backward);
}

}  // namespace resnet_fast
