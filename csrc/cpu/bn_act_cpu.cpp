// CPU kernels for the native primitives declared in csrc/ops.cpp.
//
// A 4-D activation is walked as rows of one contiguous buffer:
//   NCHW: N*C rows of H*W elements, row r has channel r % C;
//   NHWC: N*H*W rows of C elements, element j of a row has channel j.
// Inner loops run over a row with per-channel coefficients hoisted, branch-free so they vectorize.
// Reductions keep one fp64 accumulator per (thread, channel) and combine them in a fixed order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../bn_act_checks.h"

#include <type_traits>
#include <vector>

namespace resnet_fast {
namespace {

// Calls body(row_begin, row_end) in parallel over the rows of layout l (see the top of this file).
template <typename F>
void parallel_rows(const Layout& l, const F& body) {
  const int64_t rows = l.nhwc ? l.N * l.HW : l.N * l.C;
  const int64_t row_len = l.nhwc ? l.C : l.HW;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_len)), body);
}

std::tuple<at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& y) {
  const Layout l = layout_of(y, "y");
  const auto stat_type = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({l.C}, y.options().dtype(stat_type));
  at::Tensor var = at::empty({l.C}, y.options().dtype(stat_type));
  const int64_t count = l.N * l.HW;
  TORCH_CHECK(count > 0, "channel_stats: y has no elements per channel");
  const int threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "channel_stats_cpu", [&] {
    const int64_t C = l.C, HW = l.HW;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    // Shift by the channel's first element so that sum((v-p)^2) - sum(v-p)^2/n does not
    // cancel catastrophically when |mean| >> std.
    std::vector<double> pilot(C);
    for (int64_t c = 0; c < C; ++c) pilot[c] = static_cast<double>(yp[l.nhwc ? c : c * HW]);
    std::vector<double> acc(threads * C * 2, 0.0);  // per (thread, channel): sum d, sum d^2
    parallel_rows(l, [&](int64_t r0, int64_t r1) {
      double* t_acc = &acc[at::get_thread_num() * C * 2];
      for (int64_t r = r0; r < r1; ++r) {
        if (l.nhwc) {
          const scalar_t* row = yp + r * C;
          for (int64_t c = 0; c < C; ++c) {
            const double d = double(row[c]) - pilot[c];
            t_acc[2 * c] += d;
            t_acc[2 * c + 1] += d * d;
          }
        } else {
          const int64_t c = r % C;
          const scalar_t* row = yp + r * HW;
          const double p = pilot[c];
          double s1 = 0, s2 = 0;
          for (int64_t j = 0; j < HW; ++j) {
            const double d = double(row[j]) - p;
            s1 += d;
            s2 += d * d;
          }
          t_acc[2 * c] += s1;
          t_acc[2 * c + 1] += s2;
        }
      }
    });
    auto mp = mean.mutable_data_ptr<opmath_t<scalar_t>>();
    auto vp = var.mutable_data_ptr<opmath_t<scalar_t>>();
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int t = 0; t < threads; ++t) {
        a += acc[(t * C + c) * 2];
        b += acc[(t * C + c) * 2 + 1];
      }
      const double m = a / count;
      mp[c] = static_cast<opmath_t<scalar_t>>(pilot[c] + m);
      vp[c] = static_cast<opmath_t<scalar_t>>(std::max(0.0, b / count - m * m));
    }
  });
  return {mean, var};
}

// Per-channel coefficients of one apply, expanded so the inner loops have no branches:
//   main(x) = (x - m[c]) * a[c] + b[c],  side(r) = (r - rm[c]) * ra[c] + rb[c]
// (a missing mean is 0; a plain residual is side with rm = 0, ra = 1, rb = 0).
// vec_or: a copy of the optional per-channel vector t, or C copies of `fill`.
template <typename acc_t>
std::vector<acc_t> vec_or(const std::optional<at::Tensor>& t, int64_t C, acc_t fill) {
  if (!t) return std::vector<acc_t>(C, fill);
  const acc_t* p = t->const_data_ptr<acc_t>();
  return std::vector<acc_t>(p, p + C);
}

at::Tensor bn_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& mean, const at::Tensor& scale,
                      const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                      const std::optional<at::Tensor>& res_mean, const std::optional<at::Tensor>& res_scale,
                      const std::optional<at::Tensor>& res_bias, bool relu) {
  const Layout l = check_bn_act_args(x, mean, scale, bias, residual, res_mean, res_scale, res_bias);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_act_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t C = l.C, HW = l.HW;
    const auto m = vec_or<acc_t>(mean, C, 0), a = vec_or<acc_t>(scale, C, 0), b = vec_or<acc_t>(bias, C, 0);
    const auto rm = vec_or<acc_t>(res_mean, C, 0), ra = vec_or<acc_t>(res_scale, C, 1),
               rb = vec_or<acc_t>(res_bias, C, 0);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    auto run = [&](auto has_res, auto do_relu) {
      // v = main(x) [+ side(r)]; ReLU as (v < 0 ? 0 : v), so NaN propagates as in torch.relu.
      auto f = [&](acc_t xv, acc_t rv, acc_t mc, acc_t ac, acc_t bc, acc_t rmc, acc_t rac, acc_t rbc) {
        acc_t v = (xv - mc) * ac + bc;
        if constexpr (decltype(has_res)::value) v += (rv - rmc) * rac + rbc;
        if constexpr (decltype(do_relu)::value) v = v < acc_t(0) ? acc_t(0) : v;
        return v;
      };
      parallel_rows(l, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          if (l.nhwc) {
            const scalar_t* xr = xp + r * C;
            const scalar_t* rr = rp ? rp + r * C : xr;
            scalar_t* orow = op + r * C;
            for (int64_t c = 0; c < C; ++c)
              orow[c] = static_cast<scalar_t>(
                  f(acc_t(xr[c]), acc_t(rr[c]), m[c], a[c], b[c], rm[c], ra[c], rb[c]));
          } else {
            const int64_t c = r % C;
            const scalar_t* xr = xp + r * HW;
            const scalar_t* rr = rp ? rp + r * HW : xr;
            scalar_t* orow = op + r * HW;
            const acc_t mc = m[c], ac = a[c], bc = b[c], rmc = rm[c], rac = ra[c], rbc = rb[c];
            for (int64_t j = 0; j < HW; ++j)
              orow[j] = static_cast<scalar_t>(f(acc_t(xr[j]), acc_t(rr[j]), mc, ac, bc, rmc, rac, rbc));
          }
        }
      });
    };
    using T = std::true_type;
    using Fl = std::false_type;
    if (rp && relu) run(T{}, T{});
    else if (rp) run(T{}, Fl{});
    else if (relu) run(Fl{}, T{});
    else run(Fl{}, Fl{});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& mean,
    const at::Tensor& scale, const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_mean,
    const std::optional<at::Tensor>& res_scale, bool relu, std::array<bool, 5> mask) {
  const Layout l = check_bn_act_backward_args(grad_out, out, x, mean, scale, residual, res_mean, res_scale, mask);
  const bool has_res = residual.has_value();
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
    const int64_t C = l.C, HW = l.HW;
    const auto m = vec_or<acc_t>(mean, C, 0), a = vec_or<acc_t>(scale, C, 0);
    const auto rm = vec_or<acc_t>(res_mean, C, 0), ra = vec_or<acc_t>(res_scale, C, 1);
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* op = out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = has_res ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp = mask[0] ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* drp = mask[3] ? dres.mutable_data_ptr<scalar_t>() : nullptr;
    // Per thread, three rows of C fp64 sums: sum(g), sum(g*(x-mean)), sum(g*(residual-res_mean)).
    std::vector<double> acc(reduce ? threads * C * 3 : 0, 0.0);
    auto run = [&](auto do_relu) {
      auto grad = [&](int64_t i) {
        const acc_t g = acc_t(gp[i]);
        if constexpr (decltype(do_relu)::value) return acc_t(op[i]) <= acc_t(0) ? acc_t(0) : g;
        return g;
      };
      parallel_rows(l, [&](int64_t r0, int64_t r1) {
        double* t_acc = reduce ? &acc[at::get_thread_num() * C * 3] : nullptr;
        for (int64_t r = r0; r < r1; ++r) {
          if (l.nhwc) {
            // One pass over the row: elementwise results and the three per-channel sums.
            const int64_t base = r * C;
            double* s0 = t_acc;
            double* s1 = t_acc ? t_acc + C : nullptr;
            double* s2 = t_acc ? t_acc + 2 * C : nullptr;
            for (int64_t c = 0; c < C; ++c) {
              const acc_t g = grad(base + c);
              if (dxp) dxp[base + c] = static_cast<scalar_t>(g * a[c]);
              if (drp) drp[base + c] = static_cast<scalar_t>(g * ra[c]);
              if (s0) {
                s0[c] += double(g);
                s1[c] += double(g) * (double(xp[base + c]) - double(m[c]));
                if (rp) s2[c] += double(g) * (double(rp[base + c]) - double(rm[c]));
              }
            }
          } else {
            const int64_t c = r % C, base = r * HW;
            const acc_t ac = a[c], rac = ra[c];
            if (dxp)
              for (int64_t j = 0; j < HW; ++j) dxp[base + j] = static_cast<scalar_t>(grad(base + j) * ac);
            if (drp)
              for (int64_t j = 0; j < HW; ++j) drp[base + j] = static_cast<scalar_t>(grad(base + j) * rac);
            if (t_acc) {
              const double mc = m[c], rmc = rm[c];
              double s0 = 0, s1 = 0, s2 = 0;
              for (int64_t j = 0; j < HW; ++j) {
                const double g = grad(base + j);
                s0 += g;
                s1 += g * (double(xp[base + j]) - mc);
                if (rp) s2 += g * (double(rp[base + j]) - rmc);
              }
              t_acc[c] += s0;
              t_acc[C + c] += s1;
              t_acc[2 * C + c] += s2;
            }
          }
        }
      });
    };
    if (relu) run(std::true_type{});
    else run(std::false_type{});
    if (!reduce) return;
    for (int64_t c = 0; c < C; ++c) {
      double s0 = 0, s1 = 0, s2 = 0;
      for (int t = 0; t < threads; ++t) {
        const double* p = &acc[t * C * 3];
        s0 += p[c];
        s1 += p[C + c];
        s2 += p[2 * C + c];
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
