// Host-side pieces of the native runtime, driven by tests/host_parity.py: one JSON command on
// stdin, one JSON answer on stdout, compared there with the Python modules they port.
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#ifdef __linux__
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cctype>
#endif

#include "error.h"
#include "grounding.h"
#include "pages.h"
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

json plan(const json& in) {
  json engines = json::array();
  for (const auto& step : make_plan(in.at("timesteps").get<std::vector<double>>(), in.at("gates").get<std::vector<double>>(),
                                    in.at("plain").get<bool>(), in.at("fc").get<int64_t>(), in.at("fcg").get<int64_t>()))
    engines.push_back(step.engine);
  return engines;
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
  for (const auto& [name, spec] : specs_for(c, env, in.value("feature_cache", false))) out[name] = fingerprint(spec);
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
#ifdef __linux__
// Rss of this process's mappings of `path` (kB lines of /proc/self/smaps, in bytes).
std::size_t mapping_rss(const std::string& path) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool ours = false;
  std::size_t rss = 0;
  while (std::getline(smaps, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') < 17) {
      ours = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
    } else if (ours && line.rfind("Rss:", 0) == 0) {
      rss += std::stoull(line.substr(4)) * 1024;
    }
  }
  return rss;
}

// Maps `path` read-only shared and copy-on-write private, reads every byte of both, drops the file's
// mapped pages: the shared mapping's pages go, the private one's stay, the bytes read again are the same.
json pages(const json& in) {
  const std::string path = in.at("path");
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::invalid_argument("cannot open " + path);
  const auto size = static_cast<std::size_t>(lseek(fd, 0, SEEK_END));
  auto* shared = static_cast<const unsigned char*>(mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0));
  auto* priv = static_cast<unsigned char*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0));
  close(fd);
  if (shared == MAP_FAILED || priv == MAP_FAILED) throw std::invalid_argument("cannot map " + path);
  auto sum = [size](const unsigned char* p) {
    unsigned long long s = 0;
    for (std::size_t i = 0; i < size; ++i) s = s * 31 + p[i];
    return s;
  };
  const auto before_sum = sum(shared);
  priv[0] = static_cast<unsigned char>(priv[0] + 1);  // a written private page must survive the drop
  volatile unsigned long long private_sum = sum(priv);  // read every private page (kept by volatile)
  (void)private_sum;
  const auto rss_before = mapping_rss(path);
  const auto advised = drop_mapped_pages({path});
  const auto rss_after = mapping_rss(path);
  const bool same = sum(shared) == before_sum;
  const bool private_kept = priv[0] == static_cast<unsigned char>(shared[0] + 1);
  munmap(const_cast<unsigned char*>(shared), size);
  munmap(priv, size);
  return {{"size", size}, {"rss_before", rss_before}, {"rss_after", rss_after}, {"advised", advised},
          {"same_bytes", same}, {"private_kept", private_kept}};
}
#endif
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
      else if (what == "plan") out.push_back(plan(cmd));
      else if (what == "image") out.push_back(image(cmd));
      else if (what == "specs") out.push_back(specs(cmd));
      else if (what == "request") out.push_back(request(cmd));
#ifdef __linux__
      else if (what == "pages") out.push_back(pages(cmd));
#endif
      else throw std::invalid_argument("unknown command " + what);
    }
  } catch (const std::exception& e) {
    std::cerr << "unit_test: " << e.what() << "\n";
    return 1;
  }
  std::cout << out.dump() << "\n";
  return 0;
}
