// Samplers over float32 host tensors (port of gligen_rt/core/schedulers.py): PLMS and DDIM (the
// original GLIGEN's), DPM-Solver++(2M) and Euler (diffusers'). Every element-wise operation is
// the one numpy performs, in the same order, in float32 with the scalar rounded to float32 first
// (numpy's NEP 50 rule for python floats), so latents match the Python runtime bit for bit.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace gligen {

using EpsFn = std::function<Tensor(const Tensor& x_in, double t)>;

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  const std::vector<double>& timesteps() const { return timesteps_; }
  double init_noise_sigma() const { return init_noise_sigma_; }
  // x at step i -> x at step i + 1; called for i = 0, 1, ... in order.
  virtual Tensor step(const Tensor& x, int i, const EpsFn& eps_fn) = 0;
  // q_sample(x0, t_i, noise) in the sampler's own x space (inpainting's known region).
  virtual Tensor add_noise(const Tensor& x0, const Tensor& noise, int i) const;

 protected:
  std::vector<double> timesteps_;
  double init_noise_sigma_ = 1.0;
};

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, int steps);

// SD's training schedule: a_t = prod (1 - beta_s), (1000,) float64, as numpy computes it.
const std::vector<double>& alphas_cumprod();

}  // namespace gligen
