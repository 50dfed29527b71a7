// Host-side pieces of the native runtime, driven by tests/host_parity.py: one JSON command on
// stdin, one JSON answer on stdout, compared there with the Python modules they port.
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "error.h"
#include "grounding.h"
#include "request.h"
#include "schedule.h"
#include "schedulers.h"
#include "spec.h"

using nlohmann::json;
using namespace gligen;

namespace {
json tensor_json(const Tensor& t) { return {{"shape", t.shape}, {"data", t.data}}; }

json sched(const json& in) {
  auto s = make_scheduler(in.at("sampler").get<std::string>(), in.at("steps").get<int>());
  Tensor x(in.at("shape").get<Shape>(), in.at("x").get<std::vector<float>>());
  Tensor noise(x.shape, in.at("noise").get<std::vector<float>>());
  json out;
  out["timesteps"] = s->timesteps();
  out["init_noise_sigma"] = s->init_noise_sigma();
  out["add_noise"] = s->add_noise(x, noise, 0).data;
  const float sigma = static_cast<float>(s->init_noise_sigma());
  for (float& v : x.data) v = v * sigma;
  // eps(x, t) = x * (t / 1000 * 0.5) + 0.1, float32 with the scalars rounded first (numpy's rule)
  EpsFn eps = [](const Tensor& xi, double t) {
    Tensor e(xi.shape);
    const float a = static_cast<float>(t / 1000.0 * 0.5), b = static_cast<float>(0.1);
    for (size_t i = 0; i < e.data.size(); ++i) e.data[i] = xi.data[i] * a + b;
    return e;
  };
  for (size_t i = 0; i < s->timesteps().size(); ++i) x = s->step(x, static_cast<int>(i), eps);
  out["x"] = x.data;
  return out;
}

json gates(const json& in) {
  std::optional<double> beta;
  std::optional<std::array<double, 3>> at;
  if (in.contains("beta")) beta = in["beta"].get<double>();
  if (in.contains("alpha_type")) at = in["alpha_type"].get<std::array<double, 3>>();
  return request_gates(beta, at, modality_from_string(in.at("modality")), in.at("inpaint").get<bool>(),
                       in.at("steps").get<int>());
}

json image(const json& in) {
  const std::string op = in.at("op"), path = in.value("path", "");
  if (op == "clip") return tensor_json(clip_image_input(path, in.at("size").get<int>()));
  if (op == "condition") {
    auto c = condition_input(path, modality_from_string(in.at("modality")), in.at("height"), in.at("width"));
    return tensor_json(c.at("condition"));
  }
  if (op == "load") return tensor_json(load_image(path, in.at("height"), in.at("width")));
  if (op == "mask") return tensor_json(inpaint_mask(in.at("boxes").get<std::vector<Box>>(), in.at("h"), in.at("w")));
  throw std::invalid_argument("unknown image op " + op);
}

json specs(const json& in) {
  ModelConfig c = ModelConfig::from_json(in.at("model_config"));
  ShapeEnvelope env = in.contains("envelope") ? ShapeEnvelope::from_json(in["envelope"]) : ShapeEnvelope::for_config(c);
  json out = json::object();
  for (const auto& [name, spec] : specs_for(c, env)) out[name] = fingerprint(spec);
  return out;
}

json request(const json& in) {
  try {
    auto r = request_from_json(in.at("json"), "");
    validate(r, modality_from_string(in.at("modality")), in.at("inpaint"), in.at("max_size"), 64);
    return {{"ok", true}};
  } catch (const Error& e) {
    return {{"ok", false}, {"error", e.what()}};
  }
}
}  // namespace

int main() {
  std::stringstream ss;
  ss << std::cin.rdbuf();
  json out = json::array();
  try {
    for (const auto& cmd : json::parse(ss.str())) {
      const std::string what = cmd.at("cmd");
      if (what == "sched") out.push_back(sched(cmd));
      else if (what == "gates") out.push_back(gates(cmd));
      else if (what == "image") out.push_back(image(cmd));
      else if (what == "specs") out.push_back(specs(cmd));
      else if (what == "request") out.push_back(request(cmd));
      else throw std::invalid_argument("unknown command " + what);
    }
  } catch (const std::exception& e) {
    std::cerr << "unit_test: " << e.what() << "\n";
    return 1;
  }
  std::cout << out.dump() << "\n";
  return 0;
}
