// Engine specs as the runtime expects them (port of engines/spec.py: specs_for, the canonical JSON,
// the fingerprint, concrete shapes). The fingerprint must equal the exporter's byte for byte, so
// the canonical JSON is built exactly as Python's json.dumps(sort_keys=True, separators=(",",":")).
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"
#include "tensor.h"

namespace gligen {

using Range = std::array<int, 3>;  // (min, opt, max)
using Dim = std::variant<int, std::string>;

struct TensorSpec {
  std::string name;
  std::string dtype;  // "float32" | "int32"
  std::vector<Dim> dims;
};

struct Envelope {
  std::optional<Range> batch, height, width;
  int latent_factor = 8;
  int multiple = 64;
};

struct ShapeEnvelope {
  Range batch{1, 1, 4}, height{256, 512, 768}, width{256, 512, 768};
  static ShapeEnvelope for_config(const ModelConfig& c);
  static ShapeEnvelope from_json(const nlohmann::json& d);  // throws on a malformed envelope
};

struct EngineSpec {
  std::string name;
  std::vector<TensorSpec> inputs, outputs;
  Envelope envelope;
  std::vector<std::string> input_names() const;
  std::vector<std::string> output_names() const;
};

// Engine names, in build order.
extern const char* const kTextEncoder;
extern const char* const kImageEncoder;
extern const char* const kGrounding;
extern const char* const kUnet;
extern const char* const kUnetPlain;
extern const char* const kUnetShallow;
extern const char* const kUnetShallowGrounded;
extern const char* const kVaeDecoder;
extern const char* const kVaeEncoder;

// The engines of `config` keyed by name (including unet_plain); feature_cache: the UNets also
// output `deep` and unet_shallow exists (engines/spec.py specs_for).
std::map<std::string, EngineSpec> specs_for(const ModelConfig& config, const ShapeEnvelope& env,
                                            bool feature_cache = false);
nlohmann::json spec_to_json(const EngineSpec& spec);
EngineSpec spec_from_json(const nlohmann::json& d);  // throws nlohmann / std exceptions when malformed
std::string canonical_json(const EngineSpec& spec);
std::string fingerprint(const EngineSpec& spec);       // sha256 hex of the canonical JSON
std::string sha256_hex(const std::string& bytes);
std::string sha256_files(const std::vector<std::string>& paths);  // one stream over the files

// {tensor: shape} at one point; EngineError (one line) outside the envelope.
std::map<std::string, Shape> concrete_shapes(const EngineSpec& spec, int batch, int height, int width);

}  // namespace gligen
