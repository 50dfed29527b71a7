#include "folder.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "error.h"

namespace fs = std::filesystem;

namespace gligen {

namespace {
constexpr int kFormatVersion = 1;

std::vector<std::string> required_engines(const ModelConfig& c) {
  std::vector<std::string> names = {kTextEncoder};
  if (c.modality == Modality::TextImageBox) names.push_back(kImageEncoder);
  names.insert(names.end(), {kGrounding, kUnet, kVaeDecoder});
  if (c.inpaint) names.push_back(kVaeEncoder);
  return names;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

void check_onnx(const EngineFolder& folder, const std::string& name, bool check_sha256) {
  const std::string onnx = folder.onnx_path(name);
  const std::string fix = "re-export the engine folder with `gligen-rt export`";
  if (!fs::is_regular_file(onnx)) throw EngineError(onnx + " is missing: " + fix);
  const std::string mpath = folder.path + "/" + name + ".json";
  nlohmann::json m = read_manifest(mpath, "engine manifest");
  std::string engine, fp, sha;
  int64_t size = 0;
  try {
    engine = m.at("engine").get<std::string>();
    fp = m.at("spec_fingerprint").get<std::string>();
    sha = m.at("artifact_sha256").get<std::string>();
    size = m.at("artifact_size").get<int64_t>();
    m.at("model_config");
  } catch (const std::exception& e) {
    throw EngineError("corrupt engine manifest " + mpath + " (" + first_line(e.what()) +
                      "): re-export/rebuild the engine folder");
  }
  if (engine != name) throw EngineError(mpath + " describes engine '" + engine + "', not '" + name + "': re-export");
  if (m.at("model_config") != folder.manifest.at("model_config")) {
    const auto& mc = m.at("model_config");
    throw EngineError(name + ".onnx was exported from another model than " + folder.path +
                      "/manifest.json describes (" + mc.value("name", std::string("?")) + "-" +
                      mc.value("modality", std::string("?")) + "): re-export the engine folder");
  }
  const std::string want = fingerprint(folder.specs.at(name));
  if (want != fp)
    throw EngineError(name + ".onnx was built for spec " + fp.substr(0, 12) + " but the runtime expects " +
                      want.substr(0, 12) + " (engine I/O or shape envelope changed): " + fix);
  std::vector<std::string> files = {onnx};
  if (fs::exists(onnx + ".data")) files.push_back(onnx + ".data");
  int64_t got = 0;
  for (const auto& f : files) got += static_cast<int64_t>(fs::file_size(f));
  if (got != size)
    throw EngineError("corrupt " + name + ".onnx: " + std::to_string(got) + " bytes but its manifest says " +
                      std::to_string(size) + " (truncated or modified): " + fix);
  if (check_sha256 && sha256_files(files) != sha)
    throw EngineError("corrupt " + name + ".onnx: its sha256 differs from its manifest (modified): " + fix);
}
}  // namespace

nlohmann::json read_manifest(const std::string& path, const std::string& what) {
  if (!fs::is_regular_file(path))
    throw EngineError(what + " " + path + " is missing: re-export the engine folder with `gligen-rt export`");
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  nlohmann::json d;
  try {
    d = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw EngineError("corrupt " + what + " " + path + " (truncated or not JSON: " + first_line(e.what()) +
                      "): re-export/rebuild the engine folder");
  }
  if (!d.is_object())
    throw EngineError("corrupt " + what + " " + path + " (not a JSON object): re-export/rebuild the engine folder");
  auto v = d.find("format_version");
  if (v != d.end() && v->is_number_integer() && v->get<int>() > kFormatVersion)
    throw EngineError(path + " has manifest format " + std::to_string(v->get<int>()) +
                      " but this gligen-rt reads up to " + std::to_string(kFormatVersion) +
                      ": upgrade gligen-rt or re-export the engine folder");
  return d;
}

EngineFolder EngineFolder::open(const std::string& path, bool check_sha256) {
  if (!fs::is_directory(path))
    throw EngineError("engine folder " + path + " does not exist: export one with `gligen-rt export`");
  EngineFolder folder;
  folder.path = path;
  folder.manifest = read_manifest(path + "/manifest.json", "engine folder manifest");
  const auto& m = folder.manifest;
  if (!m.contains("model_config") || !m.contains("engines") || !m["engines"].is_array())
    throw EngineError("corrupt engine folder manifest " + path +
                      "/manifest.json (no model_config or engines): re-export the engine folder");
  folder.config = ModelConfig::from_json(m.at("model_config"));
  try {
    auto env = m.find("envelope");
    folder.envelope = (env != m.end() && env->is_object() && !env->empty()) ? ShapeEnvelope::from_json(*env)
                                                                            : ShapeEnvelope::for_config(folder.config);
  } catch (const std::exception& e) {
    throw EngineError(path + "/manifest.json has an unreadable envelope (" + first_line(e.what()) +
                      "): re-export the engine folder");
  }
  for (const auto& e : m["engines"]) folder.engines.push_back(e.get<std::string>());
  const bool feature_cache =
      std::find(folder.engines.begin(), folder.engines.end(), kUnetShallow) != folder.engines.end();
  auto expected = specs_for(folder.config, folder.envelope, feature_cache);
  std::vector<std::string> missing, unknown;
  for (const auto& n : required_engines(folder.config))
    if (std::find(folder.engines.begin(), folder.engines.end(), n) == folder.engines.end()) missing.push_back(n);
  if (!missing.empty())
    throw EngineError(path + " lacks the engines " + join(missing) + " that a " + folder.config.key() +
                      " model needs: re-export the engine folder with `gligen-rt export`");
  for (const auto& n : folder.engines)
    if (!expected.count(n)) unknown.push_back(n);
  if (!unknown.empty())
    throw EngineError(path + " lists engines " + join(unknown) + " that a " + folder.config.key() +
                      " model does not have: re-export the engine folder");
  for (const auto& n : folder.engines) folder.specs[n] = expected.at(n);
  for (const auto& n : folder.engines) check_onnx(folder, n, check_sha256);
  return folder;
}

std::string EngineFolder::tokenizer_dir() const {
  auto it = manifest.find("tokenizer");
  std::string sub = (it != manifest.end() && it->is_string()) ? it->get<std::string>() : "";
  if (sub.empty()) sub = "tokenizer";
  return path + "/" + sub;
}

}  // namespace gligen
