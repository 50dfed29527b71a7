#include <cstdio>
#include <filesystem>

#include "backend.h"
#include "error.h"
#include "folder.h"
#include "inspect.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace gligen {

namespace {
std::string dims(const json& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + (d[i].is_string() ? d[i].get<std::string>() : d[i].dump());
  return s + ")";
}
std::string envelope(const json& env) {
  std::string s;
  for (const char* k : {"batch", "height", "width"}) {
    if (!env.is_object() || !env.contains(k) || !env[k].is_array() || env[k].size() != 3) continue;
    const auto& v = env[k];
    s += std::string(s.empty() ? "" : ", ") + k + " " + v[0].dump() + ".." + v[2].dump() + " (opt " + v[1].dump() + ")";
  }
  return s.empty() ? "-" : s;
}
std::string str(const json& d, const char* k) {
  auto it = d.find(k);
  if (it == d.end() || it->is_null()) return "None";
  return it->is_string() ? it->get<std::string>() : it->dump();
}
std::string pad(std::string s, size_t n) {
  if (s.size() < n) s.resize(n, ' ');
  return s;
}
std::string size_mb(const std::string& p) {
  double total = 0;
  for (const auto& f : {p, p + ".data"})
    if (fs::is_regular_file(f)) total += static_cast<double>(fs::file_size(f));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", total / 1e6);
  return buf;
}
}  // namespace

std::vector<std::string> inspect_lines(const std::string& path) {
  if (!fs::is_directory(path)) throw EngineError("engine folder " + path + " does not exist");
  const json fm = read_manifest(path + "/manifest.json", "engine folder manifest");
  const json mc = fm.value("model_config", json::object());
  const std::string tok = fm.contains("tokenizer") && fm["tokenizer"].is_string() ? fm["tokenizer"].get<std::string>() : "tokenizer";
  std::vector<std::string> lines = {
      "engine folder " + path,
      "  model      " + str(mc, "name") + " " + (mc.value("inpaint", false) ? "inpaint " : "") + str(mc, "modality") +
          " (default size " + str(mc, "default_size") + ")",
      "  precision  " + str(fm, "precision"),
      "  envelope   " + envelope(fm.value("envelope", json::object())),
      "  tokenizer  " + tok + "/ (" + (fs::is_directory(path + "/" + tok) ? "present" : "MISSING") + ")",
      "  created    " + str(fm, "created"),
      "  native backends " + [] {
        std::string s;
        for (const auto& b : available_backends()) s += (s.empty() ? "" : ", ") + b;
        return s;
      }(),
  };
  if (fm.contains("engines") && fm["engines"].is_array())
    for (const auto& e : fm["engines"]) {
      const std::string name = e.is_string() ? e.get<std::string>() : e.dump();
      const std::string onnx = path + "/" + name + ".onnx";
      lines.push_back("  " + name + ": " + name + ".onnx " + (fs::is_regular_file(onnx) ? size_mb(onnx) : "MISSING"));
      const std::string mpath = path + "/" + name + ".json";
      if (!fs::is_regular_file(mpath)) {
        lines.push_back("    manifest MISSING");
        continue;
      }
      const json m = read_manifest(mpath, "engine manifest");
      const json spec = m.value("spec", json::object());
      for (const char* io : {"inputs", "outputs"})
        for (const auto& t : spec.value(io, json::array()))
          lines.push_back(std::string("    ") + (io[0] == 'i' ? "in  " : "out ") + pad(str(t, "name"), 18) + " " +
                          pad(str(t, "dtype"), 8) + " " + dims(t.value("dims", json::array())));
      lines.push_back("    envelope " + envelope(spec.value("envelope", json::object())) + "; precision " +
                      str(m, "precision") + " (" + str(m, "flavor") + ")");
    }
  return lines;
}

}  // namespace gligen
