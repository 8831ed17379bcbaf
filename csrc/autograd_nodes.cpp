// fastaevb._autograd: the two calls of a training step's loss lines, `reparameterize` (eq. 4)
// and the whole SGVB loss (eq. 10 negated), as C++ autograd nodes over the kernels of
// kernels.h. A Python autograd.Function costs tens of microseconds per step in Python (the node,
// its backward call, argument handling); these nodes cost a few, which is what a small step is
// made of (docs/performance.md). The math stays in the kernels; this file only allocates,
// calls them and wires gradients. Python (fastaevb/ops) has validated every argument before.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/python.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <tuple>

#include "gradient_cache.h"
#include "kernels.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace fastaevb {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

addr ptr(const Tensor& t) { return t.defined() ? reinterpret_cast<addr>(t.data_ptr()) : 0; }
int dtype_code(const Tensor& t) { return t.scalar_type() == at::kDouble ? 1 : 0; }
int threads() { return at::get_num_threads(); }

// torch.randint(0, kSeedBound, ()) on the CPU, as fastaevb.ops.seeds.draw makes it (SEED_BOUND
// there), without building a tensor: for a range of 2^32 or more ATen's random_ takes one
// random64() of the generator modulo the range, under the generator's lock. The same value for the
// same manual_seed (tests/test_noise.py checks it), for a few microseconds less per step.
constexpr int64_t kSeedBound = INT64_MAX;  // 2**63 - 1
int64_t draw_seed() {
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return static_cast<int64_t>(gen->random64() % static_cast<uint64_t>(kSeedBound));
}

// True when a scalar loss's upstream gradient is exactly 1 (loss.backward()): the gradients
// written in forward are then the answer as they are, with no multiply.
bool upstream_is_one(const Tensor& grad_out) {
  return grad_out.numel() == 1 && !grad_out.requires_grad() && grad_out.item<double>() == 1.0;
}

}  // namespace

// The nodes are named after these structs in autograd graphs (CppNode<fastaevb::SGVBLoss>).

// z = mu + exp(0.5 logvar) * eps (eq. 4) for mu, logvar of shape (*batch, J); eps given
// ((L, *batch, J) or undefined: then regenerated from the Philox stream of `seed`, never stored).
struct Reparameterize : torch::autograd::Function<Reparameterize> {
  static Tensor forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar,
                        const std::optional<Tensor>& eps, int64_t seed, int64_t samples) {
    const int64_t J = mu.size(-1), R = mu.numel() / J;
    const Tensor m = mu.contiguous(), v = logvar.contiguous(), e = eps ? eps->contiguous() : Tensor();
    Tensor z = at::empty({samples, R, J}, mu.options());
    reparameterize_kl_forward(ptr(z), 0, 0, 0, ptr(m), ptr(v), ptr(e), static_cast<uint64_t>(seed), samples,
                              R, J, false, dtype_code(mu), threads());
    ctx->save_for_backward({m, v, e});
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["samples"] = samples;
    std::vector<int64_t> shape = mu.sizes().vec();
    if (samples > 1) shape.insert(shape.begin(), samples);
    return z.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_z = grads[0];
    if (!grad_z.defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    const Tensor &mu = saved[0], &logvar = saved[1], &eps = saved[2];
    const int64_t J = mu.size(-1), R = mu.numel() / J, samples = ctx->saved_data["samples"].toInt();
    const Tensor g = grad_z.contiguous();  // sum().backward() hands in an expanded tensor
    Tensor grad_mu = at::empty_like(mu), grad_logvar = at::empty_like(logvar);
    reparameterize_kl_backward(ptr(grad_mu), ptr(grad_logvar), ptr(g), 0, 0, 0, ptr(mu), ptr(logvar),
                               ptr(eps), static_cast<uint64_t>(ctx->saved_data["seed"].toInt()), samples, R,
                               J, dtype_code(mu), threads());
    return {grad_mu, grad_logvar, Tensor(), Tensor(), Tensor()};
  }
};

// kl_scale * sum KL(mu, logvar) - ll_scale * sum log p(x | decoded): one kernel call that also
// writes every gradient (the loss is a scalar), handed out by backward. `bad` receives the
// kernel's out-of-range counts (decoded, x) for Python to raise on.
struct SGVBLoss : torch::autograd::Function<SGVBLoss> {
  static Tensor forward(AutogradContext* ctx, const Tensor& decoded, const Tensor& x,
                        const std::optional<Tensor>& decoder_logvar, const Tensor& mu, const Tensor& logvar,
                        int64_t likelihood, double kl_scale, double ll_scale, bool with_grad,
                        std::array<int64_t, 2>* bad) {
    const int64_t B = x.size(0), D = x.numel() / B, R = decoded.numel() / D, J = mu.size(-1);
    // The error decoders' log-scale takes the Gaussian log-variance's slot, layout and gradient.
    const bool decoder_scale =
        likelihood == kLikelihoodGaussian || likelihood == kLikelihoodMse || likelihood == kLikelihoodL1;
    TORCH_CHECK(!decoder_scale || decoder_logvar.has_value(),
                "fastaevb: this likelihood needs decoder_logvar");
    const bool byte_target = x.scalar_type() == at::kByte || x.scalar_type() == at::kBool;
    const Tensor dec = decoded.contiguous(), xs = x.contiguous(), m = mu.contiguous(),
                 v = logvar.contiguous();
    const Tensor dlv = decoder_scale ? decoder_logvar->contiguous() : Tensor();
    Tensor out = at::empty({}, decoded.options());
    Tensor grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar;
    if (with_grad) {
      grad_decoded = GradientCache::instance().empty_like(dec);
      grad_decoder_logvar = decoder_scale ? GradientCache::instance().empty_like(dlv) : Tensor();
      grad_mu = at::empty_like(m);
      grad_logvar = at::empty_like(v);
    }
    // The gradients are written here, in the same pass, because the loss is a scalar.
    const auto counts =
        sgvb_loss_forward(ptr(out), ptr(grad_decoded), ptr(grad_decoder_logvar), ptr(grad_mu),
                          ptr(grad_logvar), ptr(dec), ptr(xs), ptr(dlv), ptr(m), ptr(v), R, B, D, J,
                          static_cast<int>(likelihood), decoder_scale && dlv.numel() == 1, kl_scale, ll_scale,
                          with_grad, dtype_code(dec), byte_target ? 1 : 0, threads());
    *bad = {counts.first, counts.second};
    ctx->saved_data["grads"] = std::vector<Tensor>{grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar};
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_out = grads[0];
    TORCH_CHECK(ctx->saved_data.count("grads") == 1, torch::autograd::ERR_BACKWARD_TWICE);
    auto written = ctx->saved_data["grads"].toTensorVector();
    TORCH_CHECK(written[0].defined(), "fastaevb: SGVB loss gradients were not written in forward");
    const bool one = upstream_is_one(grad_out);
    if (!torch::autograd::get_current_graph_task_keep_graph() && !grad_out.requires_grad()) {
      // The graph is freed after this call: hand the tensors over, so that AccumulateGrad, seeing
      // no other reference, adopts them as .grad instead of copying (a whole decoder output); a
      // scaled loss ((N/M) * loss in Algorithm 1) scales them in place, with no new tensors.
      ctx->saved_data.erase("grads");
      if (!one)
        for (Tensor& g : written)
          if (g.defined()) g.mul_(grad_out);
    } else if (!one) {  // a retained graph keeps its tensors for the next backward (create_graph too)
      for (Tensor& g : written)
        if (g.defined()) g = g * grad_out;
    }
    return {written[0], Tensor(), written[1], written[2], written[3],
            Tensor(),   Tensor(), Tensor(),   Tensor(),   Tensor()};
  }
};

}  // namespace fastaevb

using torch::Tensor;

PYBIND11_MODULE(_autograd, m) {
  m.doc() = "fastaevb C++ autograd nodes over the fused CPU kernels. Called through fastaevb.backends.cpp.";
  m.def(
      "reparameterize",
      [](const Tensor& mu, const Tensor& logvar, const std::optional<Tensor>& eps,
         std::optional<int64_t> seed, int64_t samples) {
        py::gil_scoped_release no_gil;
        if (!seed && !eps) seed = fastaevb::draw_seed();
        return fastaevb::Reparameterize::apply(mu, logvar, eps, seed.value_or(0), samples);
      },
      "mu"_a, "logvar"_a, "eps"_a, "seed"_a, "samples"_a);
  m.def(
      "sgvb_loss",
      [](const Tensor& decoded, const Tensor& x, const std::optional<Tensor>& decoder_logvar,
         const Tensor& mu, const Tensor& logvar, int64_t likelihood, double kl_scale, double ll_scale,
         bool with_grad) {
        std::array<int64_t, 2> bad{0, 0};
        py::gil_scoped_release no_gil;
        Tensor loss = fastaevb::SGVBLoss::apply(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale,
                                                ll_scale, with_grad, &bad);
        return std::make_tuple(loss, bad[0], bad[1]);
      },
      "decoded"_a, "x"_a, "decoder_logvar"_a, "mu"_a, "logvar"_a, "likelihood"_a, "kl_scale"_a, "ll_scale"_a,
      "with_grad"_a);
  m.def(
      "empty_cache", [] { fastaevb::GradientCache::instance().empty(); },
      "Release the decoder-gradient buffers kept for the next step (csrc/gradient_cache.h).");
  m.def(
      "cached_gradient_bytes", [] { return fastaevb::GradientCache::instance().idle_bytes(); },
      "Bytes held in idle decoder-gradient buffers.");
}
