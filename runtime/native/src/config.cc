#include "config.h"

#include <stdexcept>

#include "error.h"

namespace gligen {

namespace {
struct ModalityInfo {
  Modality m;
  const char* name;
  int condition_channels;
  int downsampler_out;
  std::array<double, 3> alpha;
};
// gligen_rt/core/modality.py: CONDITION_CHANNELS, DOWNSAMPLER_OUT_CHANNELS, DEFAULT_ALPHA_TYPE.
const ModalityInfo kInfo[] = {
    {Modality::TextBox, "text-box", 0, 0, {0.3, 0.0, 0.7}},
    {Modality::TextImageBox, "text-image-box", 0, 0, {1.0, 0.0, 0.0}},
    {Modality::Keypoint, "keypoint", 0, 0, {0.3, 0.0, 0.7}},
    {Modality::Hed, "hed", 3, 1, {0.9, 0.0, 0.1}},
    {Modality::Canny, "canny", 3, 8, {0.9, 0.0, 0.1}},
    {Modality::Depth, "depth", 3, 8, {0.7, 0.0, 0.3}},
    {Modality::Normal, "normal", 3, 8, {0.7, 0.0, 0.3}},
    {Modality::Sem, "sem", kSemClasses, 8, {0.7, 0.0, 0.3}},
};
const ModalityInfo& info(Modality m) { return kInfo[static_cast<int>(m)]; }
}  // namespace

Modality modality_from_string(const std::string& s) {
  for (const auto& i : kInfo)
    if (s == i.name) return i.m;
  throw std::invalid_argument("unknown modality '" + s + "'");
}
std::string modality_name(Modality m) { return info(m).name; }
bool is_spatial(Modality m) { return info(m).condition_channels > 0; }
bool is_box(Modality m) { return m == Modality::TextBox || m == Modality::TextImageBox; }
int condition_channels(Modality m) { return info(m).condition_channels; }
int downsampler_out_channels(Modality m) { return info(m).downsampler_out; }
std::array<double, 3> default_alpha_type(Modality m, bool inpaint) {
  return inpaint ? std::array<double, 3>{1.0, 0.0, 0.0} : info(m).alpha;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& d) {
  ModelConfig c;
  try {
    c.name = d.at("name").get<std::string>();
    c.modality = modality_from_string(d.at("modality").get<std::string>());
    c.inpaint = d.at("inpaint").get<bool>();
    c.latent_channels = d.at("unet").at("latent_channels").get<int>();
    c.cross_attention_dim = d.at("unet").at("cross_attention_dim").get<int>();
    c.deep_channels = d.at("unet").at("block_out_channels").at(1).get<int>();
    c.vae_downscale = 1 << (static_cast<int>(d.at("vae").at("block_out_channels").size()) - 1);
    const auto& image = d.value("image", nlohmann::json());
    c.image_size = image.is_object() ? image.at("image_size").get<int>() : 0;
    c.resize_input = d.at("grounding").at("resize_input").get<int>();
    c.default_size = d.at("default_size").get<int>();
  } catch (const std::exception& e) {
    throw EngineError(std::string("the engine folder's model config is unreadable (") + e.what() +
                      "): re-export the engine folder");
  }
  if (c.modality == Modality::TextImageBox && c.image_size <= 0)
    throw EngineError("the engine folder's model config has no image encoder for text-image-box: re-export");
  c.raw = d;
  return c;
}

int ModelConfig::num_tokens() const {
  switch (modality) {
    case Modality::TextBox: return kMaxObjects;
    case Modality::TextImageBox: return 2 * kMaxObjects;
    case Modality::Keypoint: return kMaxPersons * kNumKeypoints;
    default: return (resize_input / 32) * (resize_input / 32);
  }
}

int ModelConfig::extra_channels() const {
  if (inpaint) return latent_channels + 1;  // masked clean latent + mask
  return downsampler_out_channels(modality);
}

std::string ModelConfig::key() const {
  return name + "-" + (inpaint ? "inpaint-" : "") + modality_name(modality);
}

}  // namespace gligen
