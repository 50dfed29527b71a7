// An exported engine folder as the native runtime sees it (port of runtime/folder.py and the checks
// of engines/manifest.py): every engine the model needs is listed and present, each engine manifest
// describes this model and the spec the runtime derives (same fingerprint), and each graph has its
// recorded size (and sha256, when asked). Every failure is one EngineError line.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"
#include "spec.h"

namespace gligen {

struct EngineFolder {
  std::string path;
  nlohmann::json manifest;  // DIR/manifest.json
  ModelConfig config;
  ShapeEnvelope envelope;
  std::map<std::string, EngineSpec> specs;  // the engines present, as the runtime expects them
  std::vector<std::string> engines;         // manifest order

  static EngineFolder open(const std::string& path, bool check_sha256 = true);

  std::string onnx_path(const std::string& engine) const { return path + "/" + engine + ".onnx"; }
  std::string tokenizer_dir() const;
  std::string precision() const {
    auto it = manifest.find("precision");
    return it != manifest.end() && it->is_string() ? it->get<std::string>() : "?";
  }
  bool has(const std::string& engine) const { return specs.count(engine) > 0; }
};

// Read a JSON manifest; EngineError (one line) when missing, corrupt or from a newer format.
nlohmann::json read_manifest(const std::string& path, const std::string& what);

}  // namespace gligen
