// Host-side layout description and argument checks shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels of the native primitives declared in csrc/ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <type_traits>

#ifdef __CUDACC__
#define RESNET_FAST_HD __host__ __device__
#else
#define RESNET_FAST_HD
#endif

namespace resnet_fast {

// Arithmetic type of the per-channel vectors and of the math: double for double, else float.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// A contiguous 4-D activation, NCHW or NHWC (channels_last).
struct Layout {
  int64_t N, C, HW;
  bool nhwc;
  // Channel of element i of the buffer.
  RESNET_FAST_HD int64_t channel(int64_t i) const { return nhwc ? i % C : (i / HW) % C; }
  // Buffer index of the m-th element (m in [0, N*HW)) of channel c.
  RESNET_FAST_HD int64_t index(int64_t c, int64_t m) const {
    return nhwc ? m * C + c : ((m / HW) * C + c) * HW + m % HW;
  }
};

inline Layout layout_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
  const bool nchw = t.is_contiguous();
  TORCH_CHECK(nchw || t.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be contiguous or channels_last");
  return Layout{t.size(0), t.size(1), t.size(2) * t.size(3), !nchw};
}

inline void check_same(const at::Tensor& a, const at::Tensor& ref, const Layout& l, const char* name) {
  TORCH_CHECK(a.sizes() == ref.sizes(), name, " has shape ", a.sizes(), ", expected ", ref.sizes());
  TORCH_CHECK(a.scalar_type() == ref.scalar_type(), name, " has dtype ", a.scalar_type(), ", expected ",
              ref.scalar_type());
  TORCH_CHECK(a.device() == ref.device(), name, " is on ", a.device(), ", expected ", ref.device());
  TORCH_CHECK(l.nhwc ? a.is_contiguous(at::MemoryFormat::ChannelsLast) : a.is_contiguous(), name,
              " must have the same memory format as the activation");
}

// A per-channel vector for activation x: contiguous, (C,), opmath dtype, on x's device.
inline void check_vec(const std::optional<at::Tensor>& v, const at::Tensor& x, int64_t C, const char* name) {
  if (!v) return;
  const auto op_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(v->dim() == 1 && v->size(0) == C, name, " must have shape (", C, "), got ", v->sizes());
  TORCH_CHECK(v->scalar_type() == op_type, name, " must be ", op_type, ", got ", v->scalar_type());
  TORCH_CHECK(v->is_contiguous() && v->device() == x.device(), name, " must be a contiguous tensor on ",
              x.device());
}

inline Layout check_bn_act_args(const at::Tensor& x, const std::optional<at::Tensor>& mean, const at::Tensor& scale,
                                const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                                const std::optional<at::Tensor>& res_mean, const std::optional<at::Tensor>& res_scale,
                                const std::optional<at::Tensor>& res_bias) {
  const Layout l = layout_of(x, "x");
  TORCH_CHECK(res_scale.has_value() == res_bias.has_value(), "res_scale and res_bias must be given together");
  TORCH_CHECK(!res_scale || residual, "res_scale needs a residual");
  TORCH_CHECK(!res_mean || res_scale, "res_mean needs res_scale");
  if (residual) check_same(*residual, x, l, "residual");
  check_vec(mean, x, l.C, "mean");
  check_vec(scale, x, l.C, "scale");
  check_vec(bias, x, l.C, "bias");
  check_vec(res_mean, x, l.C, "res_mean");
  check_vec(res_scale, x, l.C, "res_scale");
  check_vec(res_bias, x, l.C, "res_bias");
  return l;
}

inline Layout check_bn_act_backward_args(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x,
                                         const std::optional<at::Tensor>& mean, const at::Tensor& scale,
                                         const std::optional<at::Tensor>& residual,
                                         const std::optional<at::Tensor>& res_mean,
                                         const std::optional<at::Tensor>& res_scale, const std::array<bool, 5>& mask) {
  const Layout l = layout_of(x, "x");
  check_same(grad_out, x, l, "grad_out");
  check_same(out, x, l, "out");
  if (residual) check_same(*residual, x, l, "residual");
  check_vec(mean, x, l.C, "mean");
  check_vec(scale, x, l.C, "scale");
  check_vec(res_mean, x, l.C, "res_mean");
  check_vec(res_scale, x, l.C, "res_scale");
  TORCH_CHECK(!(mask[3] || mask[4]) || residual, "residual gradients requested without a residual");
  TORCH_CHECK(!mask[4] || res_scale, "res_scale gradient requested without res_scale");
  return l;
}

}  // namespace resnet_fast
