// Scheduled sampling as data (port of gligen_rt/core/schedule.py): per-step fuser gates from
// diffusers' `beta` or the original `alpha_type`, and the (timestep, gate, engine) plan.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "config.h"

namespace gligen {

struct PlanStep {
  int index;
  double timestep;  // integral for plms / ddim / dpmpp_2m, fractional for euler
  double gate;
  std::string engine;  // "unet" or "unet_plain"
};

std::vector<double> alpha_generator(int length, const std::array<double, 3>& alpha_type);
std::vector<double> beta_gates(int length, double beta);
std::vector<double> request_gates(const std::optional<double>& beta, const std::optional<std::array<double, 3>>& alpha_type,
                                  Modality modality, bool inpaint, int steps);
// feature_cache K >= 2: of the gate-0 steps the 1st, (K+1)-th, ... run whole, the others unet_shallow;
// feature_cache_grounded: the same on the grounded steps with unet and unet_shallow_grounded. Each run
// of one phase counts from its first step, which runs whole (gligen_rt/core/schedule.py make_plan).
std::vector<PlanStep> make_plan(const std::vector<double>& timesteps, const std::vector<double>& gates,
                                bool plain_available, int64_t feature_cache = 0, int64_t feature_cache_grounded = 0);

}  // namespace gligen
