// Training-mode BatchNorm (+ residual) (+ ReLU) for float32 channels_last CPU activations, each direction
// one call (schemas in csrc/ops.cpp, the op contract in resnet_fast/bn_ops.py); the batch statistics come
// from nhwc_channel_stats (csrc/cpu/nhwc_float_cpu.cpp), the batch_stats composite's primitive:
//
//   nhwc_batch_norm_act(x, mean, var, weight, bias, residual, eps, relu) -> out
//       out = act((x - mean)*s + bias [+ residual]), s = weight/sqrt(var + eps).
//   nhwc_batch_norm_act_backward(grad_out, out, x, weight, mean, var, eps, relu, mask) -> (dx, dw, db, dres)
//       pass 1: Σg, Σg·(x - mean) with g = grad_out * (out > 0 if relu);
//       pass 2: dx = g*s + (x - mean)*k + c, k = -s*Σg·(x - mean)/(M (var + eps)), c = -s*Σg/M; dres = g.
//
// Against eager's BatchNorm -> add -> ReLU (stats, apply, add, ReLU: 4 passes forward; ReLU backward,
// BatchNorm backward's reduction and apply: 3 passes backward) this is 2 passes each way.
// Sums: float over blocks of 32 rows, then double per (thread, channel); threads combined in a fixed order.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../bn_act_checks.h"
#include "cpu_dispatch.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace resnet_fast {
namespace bn_train {

#ifdef RESNET_FAST_HAVE_AVX2_COPY
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "bn_train_kernels.inc"
#pragma GCC pop_options
}  // namespace avx2
#endif

// (GCC notes that a 32-byte vector return changes the ABI without AVX: these are internal inline functions.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
namespace base {
#include "bn_train_kernels.inc"
}  // namespace base
#pragma GCC diagnostic pop

#ifdef RESNET_FAST_HAVE_AVX2_COPY
#define RESNET_FAST_ISA_CALL(fn, ...) (cpu_has_avx2_fma() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define RESNET_FAST_ISA_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

int64_t padded(int64_t C) { return (C + 7) / 8 * 8; }

Layout check_activation(const at::Tensor& t, const char* name, const char* op) {
  const Layout l = layout_of(t, name);
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && l.nhwc, op, ": ", name,
              " must be a float32 channels_last CPU tensor, got ", t.scalar_type(), " on ", t.device(),
              l.nhwc ? "" : " (contiguous NCHW)");
  return l;
}

void check_same_act(const at::Tensor& a, const at::Tensor& x, const char* name, const char* op) {
  check_activation(a, name, op);
  TORCH_CHECK(a.sizes() == x.sizes(), op, ": ", name, " has shape ", a.sizes(), ", expected ", x.sizes());
}

std::vector<float> vec_or(const std::optional<at::Tensor>& t, int64_t C, float fill, const char* name) {
  if (!t) return std::vector<float>(C, fill);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                  t->device().is_cpu(),
              name, " must be a contiguous float32 CPU tensor of shape (", C, "), got ", t->scalar_type(), " ",
              t->sizes());
  const float* p = t->const_data_ptr<float>();
  return std::vector<float>(p, p + C);
}

// Per-thread double sums (2 per channel) over all rows of `act`, combined in thread order.
template <typename RowFn>
std::vector<double> channel_sums(int64_t rows, int64_t C, RowFn&& row_fn) {
  const int threads = at::get_num_threads();
  std::vector<double> acc(static_cast<size_t>(threads) * 2 * C, 0.0);
  at::parallel_for(0, rows, rows_per_task(C), [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(2 * padded(C));
    row_fn(r0, r1, &acc[static_cast<size_t>(at::get_thread_num()) * 2 * C], tmp.data());
  });
  std::vector<double> total(2 * C, 0.0);
  for (int t = 0; t < threads; ++t)
    for (int64_t i = 0; i < 2 * C; ++i) total[i] += acc[static_cast<size_t>(t) * 2 * C + i];
  return total;
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                   const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                   const std::optional<at::Tensor>& residual, double eps, bool relu) {
  const char* op = "nhwc_batch_norm_act";
  const Layout l = check_activation(x, "x", op);
  if (residual) check_same_act(*residual, x, "residual", op);
  const int64_t C = l.C, rows = l.N * l.HW;
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  const std::vector<float> m = vec_or(mean, C, 0.f, "mean"), v = vec_or(var, C, 0.f, "var");
  const std::vector<float> w = vec_or(weight, C, 1.f, "weight"), b = vec_or(bias, C, 0.f, "bias");
  std::vector<float> s(C);
  for (int64_t c = 0; c < C; ++c) s[c] = static_cast<float>(w[c] / std::sqrt(static_cast<double>(v[c]) + eps));
  at::Tensor out = at::empty_like(x);
  const float* xp = x.const_data_ptr<float>();
  const float* rp = residual ? residual->const_data_ptr<float>() : nullptr;
  float* op_ = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, rows_per_task(C), [&](int64_t r0, int64_t r1) {
    RESNET_FAST_ISA_CALL(apply_rows, xp, rp, op_, m.data(), s.data(), b.data(), C, relu, r0, r1);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& var, double eps, bool relu, std::array<bool, 4> mask) {
  const char* op = "nhwc_batch_norm_act_backward";
  const Layout l = check_activation(x, "x", op);
  check_same_act(grad_out, x, "grad_out", op);
  check_same_act(out, x, "out", op);
  const int64_t C = l.C, rows = l.N * l.HW, Cp = padded(C);
  TORCH_CHECK(rows > 0, op, ": x has no elements per channel");
  TORCH_CHECK(!mask[1] || weight, op, ": a weight gradient requested without a weight");
  const std::vector<float> w = vec_or(weight, C, 1.f, "weight"), m = vec_or(mean, C, 0.f, "mean"),
                           v = vec_or(var, C, 0.f, "var");
  const float *gp = grad_out.const_data_ptr<float>(), *outp = out.const_data_ptr<float>(),
              *xp = x.const_data_ptr<float>();
  const std::vector<double> sums = channel_sums(rows, C, [&](int64_t r0, int64_t r1, double* acc, float* tmp) {
    RESNET_FAST_ISA_CALL(grad_sums_rows, gp, outp, xp, m.data(), C, Cp, relu, r0, r1, acc, tmp);
  });
  at::Tensor dw = at::empty({mask[1] ? C : 0}, mean.options()), db = at::empty({mask[2] ? C : 0}, mean.options());
  std::vector<float> s(C), k(C), c0(C);
  for (int64_t c = 0; c < C; ++c) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(v[c]) + eps);
    const double sc = w[c] * invstd;
    s[c] = static_cast<float>(sc);
    k[c] = static_cast<float>(-sc * invstd * invstd * sums[C + c] / rows);
    c0[c] = static_cast<float>(-sc * sums[c] / rows);
    if (mask[1]) dw.mutable_data_ptr<float>()[c] = static_cast<float>(sums[C + c] * invstd);
    if (mask[2]) db.mutable_data_ptr<float>()[c] = static_cast<float>(sums[c]);
  }
  at::Tensor dx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dres = mask[3] ? at::empty_like(x) : at::empty({0}, x.options());
  if (mask[0] || mask[3]) {
    float* dxp = mask[0] ? dx.mutable_data_ptr<float>() : nullptr;
    float* drp = mask[3] ? dres.mutable_data_ptr<float>() : nullptr;
    at::parallel_for(0, rows, rows_per_task(C), [&](int64_t r0, int64_t r1) {
      RESNET_FAST_ISA_CALL(grad_apply_rows, gp, outp, xp, dxp, drp, m.data(), s.data(), k.data(), c0.data(), C, relu,
                           r0, r1);
    });
  }
  return {dx, dw, db, dres};
}

}  // namespace bn_train

TORCH_LIBRARY_IMPL(resnet_fast_C, CPU, m) {
  m.impl("nhwc_batch_norm_act", &bn_train::forward);
  m.impl("nhwc_batch_norm_act_backward", &bn_train::backward);
}

}  // namespace resnet_fast
