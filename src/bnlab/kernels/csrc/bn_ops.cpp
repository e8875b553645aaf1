// The bnlab:: operators: the four stages for a distributed BN, and batch_norm with its autograd
// in C++, so that a small input pays no Python autograd.Function on its way through.
//
// Double backward (create_graph=True): the kernels are not differentiable, so backward then
// calls bnlab::batch_norm_backward_graph, whose implementation is bnlab.functional's
// differentiable formula in Python (registered by bnlab.functional when it loads this library).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "bn_cpu.h"

namespace bnlab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight,
                        const OptTensor& bias, const OptTensor& running_mean,
                        const OptTensor& running_var, bool training, double momentum,
                        double eps, int64_t act, double slope) {
    auto [y, mean, inv_std] = bnlab::forward(x, weight, bias, running_mean, running_var,
                                             training, momentum, eps, act, slope);
    // x as is (no copy); mean and inv_std are fresh (C,) tensors, never the running buffers.
    ctx->save_for_backward({x, weight.value_or(Tensor()), bias.value_or(Tensor()), mean, inv_std});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &b = saved[2], &mean = saved[3],
                 &inv_std = saved[4];
    const bool training = ctx->saved_data["training"].toBool();
    const int64_t act = ctx->saved_data["act"].toInt();
    const double slope = ctx->saved_data["slope"].toDouble();
    const OptTensor weight = w.defined() ? OptTensor(w) : std::nullopt;
    const OptTensor bias = b.defined() ? OptTensor(b) : std::nullopt;
    // Edges exist only for the tensors that were passed: x, then weight and bias if present.
    const size_t w_edge = 1, b_edge = w.defined() ? 2 : 1;
    const std::array<bool, 3> needs = {ctx->needs_input_grad(0),
                                       w.defined() && ctx->needs_input_grad(w_edge),
                                       b.defined() && ctx->needs_input_grad(b_edge)};
    Tensor dx, dw, db;
    const Tensor& dy = grads[0];
    if (!dy.defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
                               Tensor(), Tensor(), Tensor(), Tensor()};
    if (at::GradMode::is_enabled()) {  // create_graph=True: the differentiable formula
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("bnlab::batch_norm_backward_graph", "")
                           .typed<std::tuple<Tensor, Tensor, Tensor>(
                               const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                               const Tensor&, const Tensor&, bool, double, int64_t, double)>();
      std::tie(dx, dw, db) = op.call(dy, x, weight, bias, mean, inv_std, training,
                                     ctx->saved_data["eps"].toDouble(), act, slope);
    } else {
      std::tie(dx, dw, db) =
          bnlab::backward(dy, x, weight, bias, mean, inv_std, training, act, slope, needs);
    }
    return {needs[0] ? dx : Tensor(), needs[1] ? dw : Tensor(), needs[2] ? db : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor batch_norm(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                  const OptTensor& running_mean, const OptTensor& running_var, bool training,
                  double momentum, double eps, int64_t act, double slope) {
  // Without a gradient to record (inference, torch.no_grad(), sampling), skip the autograd
  // node: building it and its saved state costs more than the kernels on an MLP's batch
  // (an (8, 16) eval-mode call: 9.8 us with it).
  const auto grad_of = [](const OptTensor& t) { return t && t->requires_grad(); };
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || grad_of(weight) || grad_of(bias))) {
    return std::get<0>(bnlab::forward(x, weight, bias, running_mean, running_var, training,
                                      momentum, eps, act, slope));
  }
  return BatchNormFunction::apply(x, weight, bias, running_mean, running_var, training, momentum,
                                  eps, act, slope);
}

std::tuple<Tensor, Tensor> backward_reduce_op(const Tensor& dy, const Tensor& x,
                                              const Tensor& mean, const Tensor& inv_std) {
  return bnlab::backward_reduce(dy, x, mean, inv_std, std::nullopt, std::nullopt, kIdentity, 0.0);
}

Tensor backward_elemt_op(const Tensor& dy, const Tensor& x, const Tensor& mean,
                         const Tensor& inv_std, const OptTensor& weight, const Tensor& sum_dy,
                         const Tensor& sum_dy_xhat, int64_t count) {
  return bnlab::backward_elemt(dy, x, mean, inv_std, weight, sum_dy, sum_dy_xhat, count,
                               std::nullopt, kIdentity, 0.0);
}

Tensor elemt_op(const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                const OptTensor& weight, const OptTensor& bias) {
  return bnlab::elemt(x, mean, inv_std, weight, bias, kIdentity, 0.0);
}

}  // namespace
}  // namespace bnlab

TORCH_LIBRARY(bnlab, m) {
  m.def("batch_norm_stats(Tensor x) -> (Tensor, Tensor)");
  m.def("batch_norm_elemt(Tensor x, Tensor mean, Tensor inv_std, Tensor? weight, Tensor? bias)"
        " -> Tensor");
  m.def("batch_norm_backward_reduce(Tensor dy, Tensor x, Tensor mean, Tensor inv_std)"
        " -> (Tensor, Tensor)");
  m.def("batch_norm_backward_elemt(Tensor dy, Tensor x, Tensor mean, Tensor inv_std,"
        " Tensor? weight, Tensor sum_dy, Tensor sum_dy_xhat, int count) -> Tensor");
  m.def("batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean,"
        " Tensor(b!)? running_var, bool training, float momentum, float eps, int act=0,"
        " float slope=0.0) -> Tensor");
  m.def("batch_norm_backward_graph(Tensor dy, Tensor x, Tensor? weight, Tensor? bias,"
        " Tensor mean, Tensor inv_std, bool training, float eps, int act, float slope)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("set_output_cache_limit(int bytes) -> int", &bnlab::set_output_cache_limit);
  m.def("output_cache_bytes() -> int", &bnlab::output_cache_bytes);
}

TORCH_LIBRARY_IMPL(bnlab, CPU, m) {
  m.impl("batch_norm_stats", &bnlab::stats);
  m.impl("batch_norm_elemt", &bnlab::elemt_op);
  m.impl("batch_norm_backward_reduce", &bnlab::backward_reduce_op);
  m.impl("batch_norm_backward_elemt", &bnlab::backward_elemt_op);
}

// Autograd lives in the kernel itself (BatchNormFunction), for CPU tensors.
TORCH_LIBRARY_IMPL(bnlab, CompositeImplicitAutograd, m) {
  m.impl("batch_norm", &bnlab::batch_norm);
}
