// pybind11 module fastaevb._C: thin bindings of the kernels in kernels.h. Tensors are passed
// as raw addresses (torch's data_ptr()) by fastaevb/backends/cpp.py, so this module does not link
// libtorch. Every binding releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels.h"
#include "parallel.h"

namespace py = pybind11;
using namespace pybind11::literals;

#ifndef FASTAEVB_NATIVE_BUILD
#define FASTAEVB_NATIVE_BUILD 0
#endif

namespace {

// The two Bernoulli parameterizations share one argument list; only the input's name differs.
// `extras` (the BCE drop-ins' weight / pos_weight / target gradient) defaults to none.
template <class Fwd, class Bwd>
void bind_bernoulli(py::module_& m, const std::string& name, const char* input, Fwd fwd, Bwd bwd) {
  using guard = py::call_guard<py::gil_scoped_release>;
  const auto none = py::arg_v("extras", fastaevb::BernoulliExtras{}, "BernoulliExtras()");
  m.def((name + "_forward").c_str(), fwd, guard(), "out"_a, "grad"_a, py::arg(input), "x"_a, "R"_a, "B"_a,
        "D"_a, "reduction"_a, "scale"_a, "with_grad"_a, "dtype"_a, "xtype"_a, "nthreads"_a, none);
  m.def((name + "_backward").c_str(), bwd, guard(), "grad"_a, "grad_out"_a, py::arg(input), "x"_a, "R"_a,
        "B"_a, "D"_a, "reduction"_a, "scale"_a, "dtype"_a, "xtype"_a, "nthreads"_a, none);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastaevb fused SGVB CPU kernels (OpenMP). Called through fastaevb._cpp.";
  using guard = py::call_guard<py::gil_scoped_release>;
  namespace f = fastaevb;

  m.def("randn", &f::randn, guard(), "out"_a, "offsets"_a, "n"_a, "seed"_a, "nthreads"_a);

  m.def("reparameterize_kl_forward", &f::reparameterize_kl_forward, guard(), "z"_a, "kl"_a, "log_q"_a,
        "log_p"_a, "mu"_a, "logvar"_a, "eps"_a, "seed"_a, "L"_a, "R"_a, "J"_a, "log_weights"_a, "dtype"_a,
        "nthreads"_a);
  m.def("reparameterize_kl_backward", &f::reparameterize_kl_backward, guard(), "grad_mu"_a, "grad_logvar"_a,
        "grad_z"_a, "grad_kl"_a, "grad_log_q"_a, "grad_log_p"_a, "mu"_a, "logvar"_a, "eps"_a, "seed"_a, "L"_a,
        "R"_a, "J"_a, "dtype"_a, "nthreads"_a);

  m.def("gaussian_kl_forward", &f::gaussian_kl_forward, guard(), "out"_a, "grad_mu"_a, "grad_logvar"_a,
        "mu"_a, "logvar"_a, "R"_a, "J"_a, "reduction"_a, "scale"_a, "with_grad"_a, "dtype"_a, "nthreads"_a);
  m.def("gaussian_kl_backward", &f::gaussian_kl_backward, guard(), "grad_mu"_a, "grad_logvar"_a, "grad_out"_a,
        "mu"_a, "logvar"_a, "R"_a, "J"_a, "reduction"_a, "scale"_a, "dtype"_a, "nthreads"_a);

  py::class_<f::BernoulliExtras>(m, "BernoulliExtras",
                                 "weight / pos_weight as (address, row stride, column stride 0 or 1) "
                                 "and the target gradient's address (0: absent), see kernels.h")
      .def(py::init<>())
      .def(py::init([](f::addr weight, int64_t weight_rs, int64_t weight_cs, f::addr pos_weight,
                       int64_t pos_rs, int64_t pos_cs, f::addr grad_x) {
             return f::BernoulliExtras{{weight, weight_rs, weight_cs}, {pos_weight, pos_rs, pos_cs}, grad_x};
           }),
           "weight"_a, "weight_row_stride"_a, "weight_col_stride"_a, "pos_weight"_a,
           "pos_weight_row_stride"_a, "pos_weight_col_stride"_a, "grad_x"_a);
  bind_bernoulli(m, "bernoulli_log_likelihood", "logits", &f::bernoulli_log_likelihood_forward,
                 &f::bernoulli_log_likelihood_backward);
  bind_bernoulli(m, "bernoulli_probs_log_likelihood", "probs", &f::bernoulli_probs_log_likelihood_forward,
                 &f::bernoulli_probs_log_likelihood_backward);

  m.def("gaussian_log_likelihood_forward", &f::gaussian_log_likelihood_forward, guard(), "out"_a,
        "grad_mean"_a, "grad_logvar"_a, "x"_a, "mean"_a, "logvar"_a, "R"_a, "B"_a, "D"_a, "shared_logvar"_a,
        "reduction"_a, "scale"_a, "with_grad"_a, "dtype"_a, "nthreads"_a);
  m.def("gaussian_log_likelihood_backward", &f::gaussian_log_likelihood_backward, guard(), "grad_mean"_a,
        "grad_logvar"_a, "grad_out"_a, "x"_a, "mean"_a, "logvar"_a, "R"_a, "B"_a, "D"_a, "shared_logvar"_a,
        "reduction"_a, "scale"_a, "dtype"_a, "nthreads"_a);

  m.def("error_log_likelihood_forward", &f::error_log_likelihood_forward, guard(), "out"_a, "grad_mean"_a,
        "grad_log_scale"_a, "x"_a, "mean"_a, "log_scale"_a, "R"_a, "B"_a, "D"_a, "shared_log_scale"_a,
        "reduction"_a, "scale"_a, "power"_a, "with_grad"_a, "dtype"_a, "nthreads"_a);
  m.def("error_log_likelihood_backward", &f::error_log_likelihood_backward, guard(), "grad_mean"_a,
        "grad_log_scale"_a, "grad_out"_a, "x"_a, "mean"_a, "log_scale"_a, "R"_a, "B"_a, "D"_a,
        "shared_log_scale"_a, "reduction"_a, "scale"_a, "power"_a, "dtype"_a, "nthreads"_a);

  m.def("sgvb_loss_forward", &f::sgvb_loss_forward, guard(), "out"_a, "grad_decoded"_a,
        "grad_decoder_logvar"_a, "grad_mu"_a, "grad_logvar"_a, "decoded"_a, "x"_a, "decoder_logvar"_a, "mu"_a,
        "logvar"_a, "R"_a, "B"_a, "D"_a, "J"_a, "likelihood"_a, "shared_logvar"_a, "kl_scale"_a, "ll_scale"_a,
        "with_grad"_a, "dtype"_a, "xtype"_a, "nthreads"_a);
  m.def("iwae_loss_forward", &f::iwae_loss_forward, guard(), "out"_a, "grad_decoded"_a,
        "grad_decoder_logvar"_a, "grad_z"_a, "grad_mu"_a, "grad_logvar"_a, "grad_gate"_a, "decoded"_a, "x"_a,
        "decoder_logvar"_a, "z"_a, "mu"_a, "logvar"_a, "K"_a, "B"_a, "D"_a, "J"_a, "likelihood"_a, "shared"_a,
        "gradient"_a, "reduction"_a, "scale"_a, "dtype"_a, "xtype"_a, "nthreads"_a);
  m.def("iwae_loss_backward", &f::iwae_loss_backward, guard(), "grad_decoded"_a, "grad_decoder_logvar"_a,
        "grad_z"_a, "grad_mu"_a, "grad_logvar"_a, "grad_gate"_a, "grad_out"_a, "decoded"_a, "x"_a,
        "decoder_logvar"_a, "z"_a, "mu"_a, "logvar"_a, "K"_a, "B"_a, "D"_a, "J"_a, "likelihood"_a, "shared"_a,
        "gradient"_a, "reduction"_a, "scale"_a, "dtype"_a, "xtype"_a, "nthreads"_a);
  m.attr("IWAE_GRADIENTS") =
      py::dict("iwae"_a = static_cast<int>(f::kGradientIwae), "stl"_a = static_cast<int>(f::kGradientStl),
               "dreg"_a = static_cast<int>(f::kGradientDreg));
  m.attr("LIKELIHOODS") =
      py::dict("bernoulli"_a = static_cast<int>(f::kLikelihoodBernoulli),
               "bernoulli_probs"_a = static_cast<int>(f::kLikelihoodProbs),
               "gaussian"_a = static_cast<int>(f::kLikelihoodGaussian),
               "mse"_a = static_cast<int>(f::kLikelihoodMse), "l1"_a = static_cast<int>(f::kLikelihoodL1));

  m.attr("REDUCTIONS") =
      py::dict("none"_a = static_cast<int>(f::kReductionNone), "rows"_a = static_cast<int>(f::kReductionRows),
               "sum"_a = static_cast<int>(f::kReductionSum));
#ifdef _OPENMP
  m.attr("openmp") = _OPENMP;
#else
  m.attr("openmp") = 0;
#endif
  m.attr("native") = static_cast<bool>(FASTAEVB_NATIVE_BUILD);

  // Highway's runtime choice: the best compiled target this CPU supports (lowest bit wins).
  m.def("simd_target", [] {
    const int64_t usable = hwy::SupportedTargets() & HWY_TARGETS;
    return std::string(hwy::TargetName(usable & -usable));
  });
  m.def("simd_targets_compiled", [] {
    std::vector<std::string> names;
    for (int64_t bits = HWY_TARGETS; bits != 0; bits &= bits - 1)
      names.emplace_back(hwy::TargetName(bits & -bits));
    return names;
  });
  m.def("simd_targets_supported", [] {
    std::vector<std::string> names;
    for (int64_t bits = hwy::SupportedTargets() & HWY_TARGETS; bits != 0; bits &= bits - 1)
      names.emplace_back(hwy::TargetName(bits & -bits));
    return names;
  });
}
