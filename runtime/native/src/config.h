// The model facts the runtime needs, read from an engine folder's manifest (gligen_rt/core/config.py
// and modality.py are the one source; this mirrors what the runtime reads of them).
#pragma once

#include <array>
#include <string>

#include <nlohmann/json.hpp>

namespace gligen {

enum class Modality { TextBox, TextImageBox, Keypoint, Hed, Canny, Depth, Normal, Sem };

constexpr int kMaxObjects = 30;
constexpr int kMaxPersons = 8;
constexpr int kNumKeypoints = 17;
constexpr int kSemClasses = 152;
constexpr int kTextTokens = 77;

Modality modality_from_string(const std::string& s);  // throws std::invalid_argument
std::string modality_name(Modality m);
bool is_spatial(Modality m);
bool is_box(Modality m);
int condition_channels(Modality m);       // 0 for non-spatial
int downsampler_out_channels(Modality m); // 0 for non-spatial
std::array<double, 3> default_alpha_type(Modality m, bool inpaint);

struct ModelConfig {
  std::string name;
  Modality modality = Modality::TextBox;
  bool inpaint = false;
  int latent_channels = 4;
  int deep_channels = 0;  // unet block_out_channels[1]: the feature cache's `deep` width
  int cross_attention_dim = 768;
  int vae_downscale = 8;
  int image_size = 0;  // CLIP vision input size; 0 without an image encoder
  int resize_input = 256;
  int default_size = 512;
  nlohmann::json raw;  // the manifest's model_config, as recorded

  static ModelConfig from_json(const nlohmann::json& d);  // throws gligen::Error (EngineError)

  int context_dim() const { return cross_attention_dim; }
  int num_tokens() const;
  int extra_channels() const;
  std::string key() const;
};

}  // namespace gligen
