#include "schedule.h"

#include <cmath>

#include "error.h"

namespace gligen {

std::vector<double> alpha_generator(int length, const std::array<double, 3>& at) {
  if (length < 1) throw RequestError("the number of sampling steps must be a positive integer");
  for (double v : at)
    if (!(0.0 <= v && v <= 1.0)) throw RequestError("alpha_type entry is outside [0, 1]");
  if (std::abs(at[0] + at[1] + at[2] - 1.0) > 1e-6)
    throw RequestError("alpha_type must sum to 1 (grounded, decaying, plain fractions)");
  const int n0 = static_cast<int>(at[0] * length), n1 = static_cast<int>(at[1] * length);
  const int n2 = length - n0 - n1;
  std::vector<double> decay;
  if (n1 != 0) {
    // np.arange(0, 1, 1 / n1): ceil((1 - 0) / step) values i * step, reversed
    const double step = 1.0 / n1;
    const auto count = static_cast<int64_t>(std::ceil(1.0 / step));
    for (int64_t i = count - 1; i >= 0; --i) decay.push_back(static_cast<double>(i) * step);
  }
  if (static_cast<int>(decay.size()) != n1 || n2 < 0)
    throw RequestError("alpha_type over " + std::to_string(length) + " steps gives a decay of " + std::to_string(n1) +
                       " steps that the original's np.arange(0, 1, 1/" + std::to_string(n1) +
                       ") cannot produce exactly: change b or the step count slightly");
  std::vector<double> out(n0, 1.0);
  out.insert(out.end(), decay.begin(), decay.end());
  out.insert(out.end(), n2, 0.0);
  return out;
}

std::vector<double> beta_gates(int length, double beta) {
  if (length < 1) throw RequestError("the number of sampling steps must be a positive integer");
  if (!(0.0 <= beta && beta <= 1.0)) throw RequestError("beta is outside [0, 1]");
  const int grounded = static_cast<int>(beta * length);
  std::vector<double> out(grounded, 1.0);
  out.insert(out.end(), length - grounded, 0.0);
  return out;
}

std::vector<double> request_gates(const std::optional<double>& beta, const std::optional<std::array<double, 3>>& alpha_type,
                                  Modality modality, bool inpaint, int steps) {
  if (beta) return beta_gates(steps, *beta);
  return alpha_generator(steps, alpha_type ? *alpha_type : default_alpha_type(modality, inpaint));
}

std::vector<PlanStep> make_plan(const std::vector<double>& timesteps, const std::vector<double>& gates,
                                bool plain_available, int64_t feature_cache, int64_t feature_cache_grounded) {
  std::vector<PlanStep> plan;
  int64_t run = 0;  // steps since the phase (grounded / plain) last changed
  for (size_t i = 0; i < timesteps.size(); ++i) {
    const double g = gates.at(i);
    if (i > 0 && (g == 0.0) != (plan.back().gate == 0.0)) run = 0;
    std::string engine = g == 0.0 && plain_available ? "unet_plain" : "unet";
    const int64_t k = g == 0.0 ? feature_cache : feature_cache_grounded;
    if (k >= 2 && run % k != 0) engine = g == 0.0 ? "unet_shallow" : "unet_shallow_grounded";
    ++run;
    plan.push_back(PlanStep{static_cast<int>(i), timesteps[i], g, engine});
  }
  return plan;
}

}  // namespace gligen
