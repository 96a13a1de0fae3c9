// CPU kernels for the native primitives declared in csrc/ops.cpp.
//
// A 4-D activation is walked as rows of one contiguous buffer:
//   NCHW: N*C rows of H*W elements, row r has channel r % C;
//   NHWC: N*H*W rows of C elements, element j of a row has channel j.
// Reductions keep one fp64 accumulator per (thread, channel) and combine them at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

namespace resnet_fast {
namespace {

struct Layout {
  int64_t N, C, HW;
  bool nhwc;
};

Layout layout_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
  const bool nchw = t.is_contiguous();
  const bool nhwc = t.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(nchw || nhwc, name, " must be contiguous or channels_last");
  return Layout{t.size(0), t.size(1), t.size(2) * t.size(3), !nchw};
}

void check_same(const at::Tensor& a, const at::Tensor& ref, const Layout& l, const char* name) {
  TORCH_CHECK(a.sizes() == ref.sizes(), name, " has shape ", a.sizes(), ", expected ", ref.sizes());
  TORCH_CHECK(a.scalar_type() == ref.scalar_type(), name, " has dtype ", a.scalar_type(), ", expected ",
              ref.scalar_type());
  TORCH_CHECK(a.device() == ref.device(), name, " is on ", a.device(), ", expected ", ref.device());
  const bool ok = l.nhwc ? a.is_contiguous(at::MemoryFormat::ChannelsLast) : a.is_contiguous();
  TORCH_CHECK(ok, name, " must have the same memory format as the activation");
}

void check_vec(const at::Tensor& v, int64_t C, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == C, name, " must have shape (", C, "), got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == dtype, name, " must be ", dtype, ", got ", v.scalar_type());
  TORCH_CHECK(v.is_contiguous() && v.device().is_cpu(), name, " must be a contiguous CPU tensor");
}

// Calls f(channel, element_index) for every element, rows split across threads;
// f also receives the calling thread's id for per-thread accumulators.
template <typename F>
void for_each_element(const Layout& l, const F& f) {
  const int64_t rows = l.nhwc ? l.N * l.HW : l.N * l.C;
  const int64_t row_len = l.nhwc ? l.C : l.HW;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_len));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * row_len;
      if (l.nhwc) {
        for (int64_t c = 0; c < l.C; ++c) f(tid, c, base + c);
      } else {
        const int64_t c = r % l.C;
        for (int64_t j = 0; j < row_len; ++j) f(tid, c, base + j);
      }
    }
  });
}

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

std::tuple<at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& y) {
  const Layout l = layout_of(y, "y");
  const auto stat_type = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({l.C}, y.options().dtype(stat_type));
  at::Tensor var = at::empty({l.C}, y.options().dtype(stat_type));
  const int64_t count = l.N * l.HW;
  TORCH_CHECK(count > 0, "channel_stats: y has no elements per channel");
  const int threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "channel_stats_cpu", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    // Shift by the channel's first element so that sum((v-p)^2) - sum(v-p)^2/n does not
    // cancel catastrophically when |mean| >> std.
    std::vector<double> pilot(l.C);
    for (int64_t c = 0; c < l.C; ++c) pilot[c] = static_cast<double>(yp[l.nhwc ? c : c * l.HW]);
    std::vector<double> s1(threads * l.C, 0.0), s2(threads * l.C, 0.0);
    for_each_element(l, [&](int tid, int64_t c, int64_t i) {
      const double d = static_cast<double>(yp[i]) - pilot[c];
      s1[tid * l.C + c] += d;
      s2[tid * l.C + c] += d * d;
    });
    auto mp = mean.mutable_data_ptr<opmath_t<scalar_t>>();
    auto vp = var.mutable_data_ptr<opmath_t<scalar_t>>();
    for (int64_t c = 0; c < l.C; ++c) {
      double a = 0, b = 0;
      for (int t = 0; t < threads; ++t) {
        a += s1[t * l.C + c];
        b += s2[t * l.C + c];
      }
      const double m = a / count;
      mp[c] = static_cast<opmath_t<scalar_t>>(pilot[c] + m);
      vp[c] = static_cast<opmath_t<scalar_t>>(std::max(0.0, b / count - m * m));
    }
  });
  return {mean, var};
}

// Per-channel vectors of one apply: x -> (x - mean)*scale + bias; mean may be absent (0).
template <typename acc_t>
struct ChannelAffine {
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* bias;
  acc_t operator()(acc_t v, int64_t c) const { return (mean ? v - mean[c] : v) * scale[c] + (bias ? bias[c] : 0); }
  template <typename T>
  T centered(T v, int64_t c) const { return mean ? v - static_cast<T>(mean[c]) : v; }
};

template <typename acc_t>
ChannelAffine<acc_t> affine_of(const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& bias) {
  return {mean ? mean->const_data_ptr<acc_t>() : nullptr, scale ? scale->const_data_ptr<acc_t>() : nullptr,
          bias ? bias->const_data_ptr<acc_t>() : nullptr};
}

void check_opt_vec(const std::optional<at::Tensor>& v, int64_t C, at::ScalarType t, const char* name) {
  if (v) check_vec(*v, C, t, name);
}

at::Tensor bn_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& mean, const at::Tensor& scale,
                      const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                      const std::optional<at::Tensor>& res_mean, const std::optional<at::Tensor>& res_scale,
                      const std::optional<at::Tensor>& res_bias, bool relu) {
  const Layout l = layout_of(x, "x");
  const auto op_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_opt_vec(mean, l.C, op_type, "mean");
  check_vec(scale, l.C, op_type, "scale");
  check_vec(bias, l.C, op_type, "bias");
  const bool dual = res_scale.has_value();
  TORCH_CHECK(dual == res_bias.has_value(), "res_scale and res_bias must be given together");
  TORCH_CHECK(!dual || residual.has_value(), "res_scale needs a residual");
  TORCH_CHECK(!res_mean || dual, "res_mean needs res_scale");
  if (residual) check_same(*residual, x, l, "residual");
  check_opt_vec(res_mean, l.C, op_type, "res_mean");
  check_opt_vec(res_scale, l.C, op_type, "res_scale");
  check_opt_vec(res_bias, l.C, op_type, "res_bias");
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_act_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    const auto main = affine_of<acc_t>(mean, scale, bias);
    const auto side = affine_of<acc_t>(res_mean, res_scale, res_bias);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_each_element(l, [&](int, int64_t c, int64_t i) {
      acc_t v = main(static_cast<acc_t>(xp[i]), c);
      if (rp) v += dual ? side(static_cast<acc_t>(rp[i]), c) : static_cast<acc_t>(rp[i]);
      if (relu && v < acc_t(0)) v = acc_t(0);  // NaN propagates, as torch.relu
      op[i] = static_cast<scalar_t>(v);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& mean,
    const at::Tensor& scale, const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_mean,
    const std::optional<at::Tensor>& res_scale, bool relu, std::array<bool, 5> mask) {
  const Layout l = layout_of(x, "x");
  const auto op_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_same(grad_out, x, l, "grad_out");
  check_same(out, x, l, "out");
  check_opt_vec(mean, l.C, op_type, "mean");
  check_vec(scale, l.C, op_type, "scale");
  const bool has_res = residual.has_value();
  const bool dual = res_scale.has_value();
  if (has_res) check_same(*residual, x, l, "residual");
  check_opt_vec(res_mean, l.C, op_type, "res_mean");
  check_opt_vec(res_scale, l.C, op_type, "res_scale");
  TORCH_CHECK(!(mask[3] || mask[4]) || has_res, "residual gradients requested without a residual");
  TORCH_CHECK(!mask[4] || dual, "res_scale gradient requested without res_scale");

  auto vec_opts = scale.options();
  at::Tensor dx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dscale = at::empty({mask[1] ? l.C : 0}, vec_opts);
  at::Tensor dbias = at::empty({mask[2] ? l.C : 0}, vec_opts);
  at::Tensor dres = mask[3] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dres_scale = at::empty({mask[4] ? l.C : 0}, vec_opts);
  const bool reduce = mask[1] || mask[2] || mask[4];
  const int threads = at::get_num_threads();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_act_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* op = out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = has_res ? residual->const_data_ptr<scalar_t>() : nullptr;
    const auto main = affine_of<acc_t>(mean, scale, std::nullopt);
    const auto side = affine_of<acc_t>(res_mean, res_scale, std::nullopt);
    scalar_t* dxp = mask[0] ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* drp = mask[3] ? dres.mutable_data_ptr<scalar_t>() : nullptr;
    // Per (thread, channel): sum(g), sum(g*(x-mean)), sum(g*(residual-res_mean)).
    std::vector<double> acc(reduce ? threads * l.C * 3 : 0, 0.0);
    for_each_element(l, [&](int tid, int64_t c, int64_t i) {
      acc_t g = static_cast<acc_t>(gp[i]);
      if (relu && static_cast<acc_t>(op[i]) <= acc_t(0)) g = acc_t(0);  // as threshold_backward
      if (dxp) dxp[i] = static_cast<scalar_t>(g * main.scale[c]);
      if (drp) drp[i] = static_cast<scalar_t>(dual ? g * side.scale[c] : g);
      if (reduce) {
        double* a = &acc[(tid * l.C + c) * 3];
        a[0] += g;
        a[1] += static_cast<double>(g) * main.centered(static_cast<double>(xp[i]), c);
        if (rp) a[2] += static_cast<double>(g) * side.centered(static_cast<double>(rp[i]), c);
      }
    });
    if (!reduce) return;
    for (int64_t c = 0; c < l.C; ++c) {
      double s0 = 0, s1 = 0, s2 = 0;
      for (int t = 0; t < threads; ++t) {
        const double* a = &acc[(t * l.C + c) * 3];
        s0 += a[0];
        s1 += a[1];
        s2 += a[2];
      }
      if (mask[1]) dscale.mutable_data_ptr<acc_t>()[c] = static_cast<acc_t>(s1);
      if (mask[2]) dbias.mutable_data_ptr<acc_t>()[c] = static_cast<acc_t>(s0);
      if (mask[4]) dres_scale.mutable_data_ptr<acc_t>()[c] = static_cast<acc_t>(s2);
    }
  });
  return {dx, dscale, dbias, dres, dres_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fast_C, CPU, m) {
  m.impl("channel_stats", &channel_stats_cpu);
  m.impl("bn_act", &bn_act_cpu);
  m.impl("bn_act_backward", &bn_act_backward_cpu);
}

}  // namespace resnet_fast
