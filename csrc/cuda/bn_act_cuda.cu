// CUDA kernels for the native primitives declared in csrc/ops.cpp (same math as csrc/cpu).
//
// Element i of a contiguous 4-D buffer has channel
//   NCHW: (i / HW) % C        NHWC: i % C
// Per-channel reductions: grid (C, SPLITS); block (c, s) reduces every SPLITS-th slice of
// channel c's N*HW elements into fp64 partials, and a second kernel sums the SPLITS partials
// in a fixed order (deterministic, no atomics). Simple and correct first: the Triton path of
// the GPU issue replaces these where it measures faster.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../bn_act_checks.h"

#include <type_traits>

namespace resnet_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kSplits = 64;

__device__ double block_sum(double v, double* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? smem[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
  __syncthreads();
  return v;  // valid in thread 0
}

// partial[(c*kSplits + s)*2 + {0,1}] = sums of (y - pilot_c) and (y - pilot_c)^2 over slice s.
template <typename scalar_t>
__global__ void stats_partial_kernel(const scalar_t* __restrict__ y, Layout l, double* __restrict__ partial) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.x, count = l.N * l.HW;
  const double pilot = static_cast<double>(y[l.index(c, 0)]);
  double s1 = 0, s2 = 0;
  for (int64_t m = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; m < count; m += (int64_t)gridDim.y * blockDim.x) {
    const double d = static_cast<double>(y[l.index(c, m)]) - pilot;
    s1 += d;
    s2 += d * d;
  }
  s1 = block_sum(s1, smem);
  s2 = block_sum(s2, smem);
  if (threadIdx.x == 0) {
    partial[(c * kSplits + blockIdx.y) * 2] = s1;
    partial[(c * kSplits + blockIdx.y) * 2 + 1] = s2;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void stats_finish_kernel(const scalar_t* __restrict__ y, Layout l, const double* __restrict__ partial,
                                    acc_t* __restrict__ mean, acc_t* __restrict__ var) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= l.C) return;
  const double count = static_cast<double>(l.N * l.HW);
  double a = 0, b = 0;
  for (int s = 0; s < kSplits; ++s) {
    a += partial[(c * kSplits + s) * 2];
    b += partial[(c * kSplits + s) * 2 + 1];
  }
  const double m = a / count;
  mean[c] = static_cast<acc_t>(static_cast<double>(y[l.index(c, 0)]) + m);
  var[c] = static_cast<acc_t>(fmax(0.0, b / count - m * m));
}

// x -> (x - mean)*scale + bias per channel; a null mean is 0, a null bias is 0.
template <typename acc_t>
struct ChannelAffine {
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* bias;
  __device__ acc_t operator()(acc_t v, int64_t c) const {
    return (mean ? v - mean[c] : v) * scale[c] + (bias ? bias[c] : acc_t(0));
  }
  template <typename T>
  __device__ T centered(T v, int64_t c) const { return mean ? v - static_cast<T>(mean[c]) : v; }
};

template <typename scalar_t, typename acc_t>
__global__ void bn_act_kernel(const scalar_t* __restrict__ x, ChannelAffine<acc_t> main,
                              const scalar_t* __restrict__ res, bool dual, ChannelAffine<acc_t> side, bool relu,
                              Layout l, int64_t numel, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = l.channel(i);
    acc_t v = main(static_cast<acc_t>(x[i]), c);
    if (res) v += dual ? side(static_cast<acc_t>(res[i]), c) : static_cast<acc_t>(res[i]);
    if (relu && v < acc_t(0)) v = acc_t(0);
    out[i] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void act_backward_apply_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ out,
                                          const acc_t* __restrict__ scale, const acc_t* __restrict__ res_scale,
                                          bool relu, Layout l, int64_t numel, scalar_t* __restrict__ dx,
                                          scalar_t* __restrict__ dres) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = l.channel(i);
    acc_t gi = static_cast<acc_t>(g[i]);
    if (relu && static_cast<acc_t>(out[i]) <= acc_t(0)) gi = acc_t(0);
    if (dx) dx[i] = static_cast<scalar_t>(gi * scale[c]);
    if (dres) dres[i] = static_cast<scalar_t>(res_scale ? gi * res_scale[c] : gi);
  }
}

// partial[(c*kSplits + s)*3 + {0,1,2}] = sums of g, g*(x-mean), g*(res-res_mean) over slice s
// (g masked by ReLU).
template <typename scalar_t, typename acc_t>
__global__ void act_backward_partial_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ out,
                                            const scalar_t* __restrict__ x, ChannelAffine<acc_t> main,
                                            const scalar_t* __restrict__ res, ChannelAffine<acc_t> side,
                                            bool relu, Layout l, double* __restrict__ partial) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.x, count = l.N * l.HW;
  double s0 = 0, s1 = 0, s2 = 0;
  for (int64_t m = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; m < count; m += (int64_t)gridDim.y * blockDim.x) {
    const int64_t i = l.index(c, m);
    double gi = static_cast<double>(g[i]);
    if (relu && static_cast<double>(out[i]) <= 0.0) gi = 0.0;
    s0 += gi;
    s1 += gi * main.centered(static_cast<double>(x[i]), c);
    if (res) s2 += gi * side.centered(static_cast<double>(res[i]), c);
  }
  s0 = block_sum(s0, smem);
  s1 = block_sum(s1, smem);
  s2 = block_sum(s2, smem);
  if (threadIdx.x == 0) {
    double* p = &partial[(c * kSplits + blockIdx.y) * 3];
    p[0] = s0;
    p[1] = s1;
    p[2] = s2;
  }
}

template <typename acc_t>
__global__ void act_backward_finish_kernel(const double* __restrict__ partial, int64_t C, acc_t* dscale,
                                           acc_t* dbias, acc_t* dres_scale) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s0 = 0, s1 = 0, s2 = 0;
  for (int s = 0; s < kSplits; ++s) {
    const double* p = &partial[(c * kSplits + s) * 3];
    s0 += p[0];
    s1 += p[1];
    s2 += p[2];
  }
  if (dscale) dscale[c] = static_cast<acc_t>(s1);
  if (dbias) dbias[c] = static_cast<acc_t>(s0);
  if (dres_scale) dres_scale[c] = static_cast<acc_t>(s2);
}

template <typename acc_t>
ChannelAffine<acc_t> affine_of(const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& bias) {
  return {mean ? mean->const_data_ptr<acc_t>() : nullptr, scale ? scale->const_data_ptr<acc_t>() : nullptr,
          bias ? bias->const_data_ptr<acc_t>() : nullptr};
}

int elementwise_blocks(int64_t numel) {
  return static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads, 65535));
}

std::tuple<at::Tensor, at::Tensor> channel_stats_cuda(const at::Tensor& y) {
  const Layout l = layout_of(y, "y");
  TORCH_CHECK(l.N * l.HW > 0, "channel_stats: y has no elements per channel");
  c10::cuda::CUDAGuard guard(y.device());
  const auto stat_type = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({l.C}, y.options().dtype(stat_type));
  at::Tensor var = at::empty({l.C}, y.options().dtype(stat_type));
  at::Tensor partial = at::empty({l.C * kSplits * 2}, y.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "channel_stats_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    stats_partial_kernel<scalar_t><<<dim3(l.C, kSplits), kThreads, 0, stream>>>(
        y.const_data_ptr<scalar_t>(), l, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    stats_finish_kernel<scalar_t, acc_t><<<(l.C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        y.const_data_ptr<scalar_t>(), l, partial.const_data_ptr<double>(), mean.mutable_data_ptr<acc_t>(),
        var.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, var};
}

at::Tensor bn_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& mean, const at::Tensor& scale,
                       const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                       const std::optional<at::Tensor>& res_mean, const std::optional<at::Tensor>& res_scale,
                       const std::optional<at::Tensor>& res_bias, bool relu) {
  const Layout l = check_bn_act_args(x, mean, scale, bias, residual, res_mean, res_scale, res_bias);
  c10::cuda::CUDAGuard guard(x.device());
  const bool dual = res_scale.has_value();
  at::Tensor out = at::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_act_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    bn_act_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), affine_of<acc_t>(mean, scale, bias),
        residual ? residual->const_data_ptr<scalar_t>() : nullptr, dual,
        affine_of<acc_t>(res_mean, res_scale, res_bias), relu, l, numel, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& mean,
    const at::Tensor& scale, const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_mean,
    const std::optional<at::Tensor>& res_scale, bool relu, std::array<bool, 5> mask) {
  const Layout l = check_bn_act_backward_args(grad_out, out, x, mean, scale, residual, res_mean, res_scale, mask);
  c10::cuda::CUDAGuard guard(x.device());
  auto vec_opts = scale.options();
  at::Tensor dx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dscale = at::empty({mask[1] ? l.C : 0}, vec_opts);
  at::Tensor dbias = at::empty({mask[2] ? l.C : 0}, vec_opts);
  at::Tensor dres = mask[3] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dres_scale = at::empty({mask[4] ? l.C : 0}, vec_opts);
  const int64_t numel = x.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_act_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* res = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    if ((mask[0] || mask[3]) && numel > 0) {
      act_backward_apply_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(),
          res_scale ? res_scale->const_data_ptr<acc_t>() : nullptr, relu, l, numel,
          mask[0] ? dx.mutable_data_ptr<scalar_t>() : nullptr, mask[3] ? dres.mutable_data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if ((mask[1] || mask[2] || mask[4]) && l.C > 0) {
      at::Tensor partial = at::zeros({l.C * kSplits * 3}, x.options().dtype(at::kDouble));
      if (numel > 0) {
        act_backward_partial_kernel<scalar_t, acc_t><<<dim3(l.C, kSplits), kThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            affine_of<acc_t>(mean, scale, std::nullopt), res, affine_of<acc_t>(res_mean, res_scale, std::nullopt),
            relu, l, partial.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      act_backward_finish_kernel<acc_t><<<(l.C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          partial.const_data_ptr<double>(), l.C, mask[1] ? dscale.mutable_data_ptr<acc_t>() : nullptr,
          mask[2] ? dbias.mutable_data_ptr<acc_t>() : nullptr, mask[4] ? dres_scale.mutable_data_ptr<acc_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, dscale, dbias, dres, dres_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fast_C, CUDA, m) {
  m.impl("channel_stats", &channel_stats_cuda);
  m.impl("bn_act", &bn_act_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
}

}  // namespace resnet_fast
