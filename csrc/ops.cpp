// Schemas of the native primitives behind resnet_fast's memory-bound ops, and the
// module init that lets `import resnet_fast._C` load this library.
//
// These are building blocks, not the public op set: torch.ops.resnet_fast (defined in
// resnet_fast/ops.py) owns the contracts, fake kernels and autograd; its native backend
// calls these for the per-channel work around aten's convolution.
//
// Layout: every tensor argument of one call shares one memory format, either contiguous
// NCHW or channels_last NHWC (the Python side normalizes this). Per-channel vectors
// (scale, shift, statistics) are float32, or float64 when the activation is float64.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import resnet_fast._C` needs a PyInit symbol; the ops register themselves statically.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(resnet_fast_C, m) {
  // Biased per-channel mean and variance of a 4-D activation (shifted sums, fp64 accumulation).
  m.def("channel_stats(Tensor y) -> (Tensor mean, Tensor var)");
  // BatchNorm apply in centered form (no cancellation when |mean| >> std):
  //   out = act((x - mean)*scale + bias [+ r]),  r = (residual - res_mean)*res_scale + res_bias ("dual BN")
  //   or r = residual; act = ReLU or identity; a missing mean is 0.
  m.def(
      "bn_act(Tensor x, Tensor? mean, Tensor scale, Tensor bias, Tensor? residual, Tensor? res_mean, "
      "Tensor? res_scale, Tensor? res_bias, bool relu) -> Tensor");
  // Backward of bn_act given its output `out`: g = grad_out * (out > 0 if relu),
  // dx = g*scale, dscale = sum(g*(x - mean)), dbias = sum(g), dres = g*res_scale (or g),
  // dres_scale = sum(g*(residual - res_mean)). Unrequested results are returned as empty tensors.
  m.def(
      "bn_act_backward(Tensor grad_out, Tensor out, Tensor x, Tensor? mean, Tensor scale, Tensor? residual, "
      "Tensor? res_mean, Tensor? res_scale, bool relu, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  // The same three for float32 channels_last CPU activations only, vectorized (csrc/cpu/nhwc_float_cpu.cpp).
  m.def("nhwc_channel_stats(Tensor y) -> (Tensor mean, Tensor var)");
  m.def(
      "nhwc_bn_act(Tensor x, Tensor? mean, Tensor scale, Tensor bias, Tensor? residual, Tensor? res_mean, "
      "Tensor? res_scale, Tensor? res_bias, bool relu) -> Tensor");
  m.def(
      "nhwc_bn_act_backward(Tensor grad_out, Tensor out, Tensor x, Tensor? mean, Tensor scale, Tensor? residual, "
      "Tensor? res_mean, Tensor? res_scale, bool relu, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  // Training-mode BatchNorm (+ residual) (+ ReLU), float32 channels_last CPU only (csrc/cpu/bn_train_cpu.cpp):
  // out = act((x - mean)*weight/sqrt(var + eps) + bias [+ residual]) over x's batch statistics mean, var
  // (from nhwc_channel_stats).
  m.def(
      "nhwc_batch_norm_act(Tensor x, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, "
      "float eps, bool relu) -> Tensor");
  // Its backward given out: g = grad_out * (out > 0 if relu); (dx, dweight, dbias, dresidual = g), mask in that order.
  m.def(
      "nhwc_batch_norm_act_backward(Tensor grad_out, Tensor out, Tensor x, Tensor? weight, Tensor mean, Tensor var, "
      "float eps, bool relu, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}
