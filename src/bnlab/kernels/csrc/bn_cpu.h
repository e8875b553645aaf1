// bnlab's CPU batch-norm kernels: the entry points shared by the kernels (bn_kernels.cpp) and
// the operator registration with its C++ autograd (bn_ops.cpp). See bnlab/kernels/cpu.py for
// why this is a C++ extension and how it is built.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace bnlab {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The activation fused after the affine map: y = act(gamma * x_hat + beta).
enum Act : int64_t { kIdentity = 0, kRelu = 1, kLeakyRelu = 2 };

// ---- stages (the names and meanings of bnlab.functional's batch_norm_* functions) ----------

// Per-channel (mean, m2) in the statistics dtype; m2 = sum of squared deviations.
std::tuple<Tensor, Tensor> stats(const Tensor& x);

// y = act(x * scale + shift) with scale = gamma * inv_std, shift = beta - mean * scale.
Tensor elemt(const Tensor& x, const Tensor& mean, const Tensor& inv_std, const OptTensor& weight,
             const OptTensor& bias, int64_t act, double slope);

// Per-channel (sum dz, sum dz * x_hat), dz = dy * act'(z): dbeta and dgamma.
std::tuple<Tensor, Tensor> backward_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean,
                                           const Tensor& inv_std, const OptTensor& weight,
                                           const OptTensor& bias, int64_t act, double slope);

// dx = a * dz + b * x + c with the per-channel a, b, c of the closed form (see the .cpp).
Tensor backward_elemt(const Tensor& dy, const Tensor& x, const Tensor& mean,
                      const Tensor& inv_std, const OptTensor& weight, const Tensor& sum_dy,
                      const Tensor& sum_dy_xhat, int64_t count, const OptTensor& bias,
                      int64_t act, double slope);

// ---- one process: the stages composed -----------------------------------------------------

// Returns (y, mean, inv_std); updates the running statistics in place when training.
std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& x, const OptTensor& weight,
                                           const OptTensor& bias, const OptTensor& running_mean,
                                           const OptTensor& running_var, bool training,
                                           double momentum, double eps, int64_t act,
                                           double slope);

// Returns (dx, dweight, dbias); undefined where not needed.
std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& dy, const Tensor& x,
                                            const OptTensor& weight, const OptTensor& bias,
                                            const Tensor& mean, const Tensor& inv_std,
                                            bool training, int64_t act, double slope,
                                            std::array<bool, 3> needs);

// ---- memory: the cache of freed full-size outputs (see bn_kernels.cpp) -----------------------

// Sets the most bytes the cache may hold (0 = no cache); returns the previous limit.
int64_t set_output_cache_limit(int64_t bytes);

// Bytes the cache holds now.
int64_t output_cache_bytes();

}  // namespace bnlab
