#include "spec.h"

#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <stdexcept>

#include "error.h"

namespace gligen {

const char* const kTextEncoder = "text_encoder";
const char* const kImageEncoder = "image_encoder";
const char* const kGrounding = "grounding";
const char* const kUnet = "unet";
const char* const kUnetPlain = "unet_plain";
const char* const kUnetShallow = "unet_shallow";
const char* const kUnetShallowGrounded = "unet_shallow_grounded";
const char* const kVaeDecoder = "vae_decoder";
const char* const kVaeEncoder = "vae_encoder";

namespace {
const std::string B = "batch", H = "height", W = "width", HL = "height_latent", WL = "width_latent";

TensorSpec t(const std::string& name, std::vector<Dim> dims, const std::string& dtype = "float32") {
  return TensorSpec{name, dtype, std::move(dims)};
}

nlohmann::json range_json(const std::optional<Range>& r) {
  if (!r) return nullptr;
  return nlohmann::json::array({(*r)[0], (*r)[1], (*r)[2]});
}

std::optional<Range> range_from(const nlohmann::json& v) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_array() || v.size() != 3) throw std::invalid_argument("a range must be 3 integers");
  return Range{v[0].get<int>(), v[1].get<int>(), v[2].get<int>()};
}

Range check_range(const char* name, Range r, int multiple) {
  if (!(1 <= r[0] && r[0] <= r[1] && r[1] <= r[2]))
    throw std::invalid_argument(std::string(name) + " range must be (min, opt, max) with 1 <= min <= opt <= max");
  for (int v : r)
    if (v % multiple) throw std::invalid_argument(std::string(name) + " range must hold multiples of " + std::to_string(multiple));
  return r;
}
}  // namespace

ShapeEnvelope ShapeEnvelope::for_config(const ModelConfig& c) {
  int s = c.default_size, m = 64;
  Range d{std::max(m, s / 2 / m * m), s, std::max(s, (3 * s / 2) / m * m)};
  ShapeEnvelope e;
  e.batch = {1, 1, 4};
  e.height = check_range("height", d, 64);
  e.width = check_range("width", d, 64);
  return e;
}

ShapeEnvelope ShapeEnvelope::from_json(const nlohmann::json& d) {
  ShapeEnvelope e;
  e.batch = check_range("batch", *range_from(d.at("batch")), 1);
  e.height = check_range("height", *range_from(d.at("height")), 64);
  e.width = check_range("width", *range_from(d.at("width")), 64);
  return e;
}

std::vector<std::string> EngineSpec::input_names() const {
  std::vector<std::string> out;
  for (const auto& i : inputs) out.push_back(i.name);
  return out;
}
std::vector<std::string> EngineSpec::output_names() const {
  std::vector<std::string> out;
  for (const auto& o : outputs) out.push_back(o.name);
  return out;
}

std::map<std::string, EngineSpec> specs_for(const ModelConfig& config, const ShapeEnvelope& env, bool feature_cache) {
  const int f = config.vae_downscale, d = config.context_dim(), c = config.latent_channels;
  const int b0 = env.batch[0], bo = env.batch[1], b1 = env.batch[2];
  Envelope hw;
  hw.height = env.height;
  hw.width = env.width;
  hw.latent_factor = f;
  hw.multiple = 64;
  const Range cfg_batch{b0, 2 * bo, 2 * b1};
  auto with_batch = [&](Range b, bool spatial) {
    Envelope e = hw;
    e.batch = b;
    if (!spatial) e.height = e.width = std::nullopt;
    return e;
  };

  std::map<std::string, EngineSpec> specs;
  const int text_max = kMaxObjects * b1;
  specs[kTextEncoder] = EngineSpec{kTextEncoder,
                                   {t("input_ids", {B, kTextTokens}, "int32")},
                                   {t("last_hidden_state", {B, kTextTokens, d}), t("pooled", {B, d})},
                                   with_batch({1, std::min(2 * bo, text_max), text_max}, false)};
  if (config.modality == Modality::TextImageBox) {
    const int s = config.image_size;
    specs[kImageEncoder] = EngineSpec{kImageEncoder,
                                      {t("pixel_values", {B, 3, s, s})},
                                      {t("image_features", {B, d})},
                                      with_batch({1, bo, kMaxObjects * b1}, false)};
  }
  const bool spatial = is_spatial(config.modality);
  const int k = config.extra_channels();
  std::vector<TensorSpec> g_in;
  switch (config.modality) {
    case Modality::TextBox:
      g_in = {t("boxes", {B, kMaxObjects, 4}), t("masks", {B, kMaxObjects}),
              t("phrase_embeddings", {B, kMaxObjects, d})};
      break;
    case Modality::TextImageBox:
      g_in = {t("boxes", {B, kMaxObjects, 4}),        t("masks", {B, kMaxObjects}),
              t("text_masks", {B, kMaxObjects}),      t("image_masks", {B, kMaxObjects}),
              t("phrase_embeddings", {B, kMaxObjects, d}), t("image_embeddings", {B, kMaxObjects, d})};
      break;
    case Modality::Keypoint:
      g_in = {t("points", {B, kMaxPersons * kNumKeypoints, 2}), t("masks", {B, kMaxPersons * kNumKeypoints})};
      break;
    default:
      g_in = {t("condition", {B, condition_channels(config.modality), H, W}), t("masks", {B, 1})};
  }
  std::vector<TensorSpec> g_out = {t("tokens", {B, config.num_tokens(), d})};
  if (spatial) g_out.push_back(t("extra", {B, k, HL, WL}));
  specs[kGrounding] = EngineSpec{kGrounding, g_in, g_out, with_batch(cfg_batch, spatial)};

  const TensorSpec sample = t("sample", {B, c, HL, WL}), timestep = t("timestep", {1}),
                   context = t("context", {B, kTextTokens, d});
  const std::vector<TensorSpec> eps = {t("eps", {B, c, HL, WL})};
  const TensorSpec deep = t("deep", {B, config.deep_channels, HL, WL});
  std::vector<TensorSpec> unet_out = eps;
  if (feature_cache) unet_out.push_back(deep);
  const TensorSpec tokens = t("tokens", {B, config.num_tokens(), d}), gate = t("gate", {1});
  std::vector<TensorSpec> unet_in = {sample, timestep, context, tokens, gate};
  std::vector<TensorSpec> shallow_grounded_in = {sample, timestep, context, tokens, gate, deep};
  if (k) {
    unet_in.push_back(t("extra", {B, k, HL, WL}));
    shallow_grounded_in.push_back(t("extra", {B, k, HL, WL}));
  }
  specs[kUnet] = EngineSpec{kUnet, unet_in, unet_out, with_batch(cfg_batch, true)};
  std::vector<TensorSpec> plain_in = {sample, timestep, context};
  std::vector<TensorSpec> shallow_in = {sample, timestep, context, deep};
  if (k && config.inpaint) {
    plain_in.push_back(t("extra", {B, k, HL, WL}));
    shallow_in.push_back(t("extra", {B, k, HL, WL}));
  }
  specs[kUnetPlain] = EngineSpec{kUnetPlain, plain_in, unet_out, with_batch(cfg_batch, true)};
  if (feature_cache) {
    specs[kUnetShallow] = EngineSpec{kUnetShallow, shallow_in, eps, with_batch(cfg_batch, true)};
    specs[kUnetShallowGrounded] = EngineSpec{kUnetShallowGrounded, shallow_grounded_in, eps, with_batch(cfg_batch, true)};
  }
  specs[kVaeDecoder] = EngineSpec{kVaeDecoder, {t("latents", {B, c, HL, WL})}, {t("images", {B, 3, H, W})},
                                  with_batch(env.batch, true)};
  if (config.inpaint)
    specs[kVaeEncoder] = EngineSpec{kVaeEncoder,
                                    {t("images", {B, 3, H, W})},
                                    {t("mean", {B, c, HL, WL}), t("std", {B, c, HL, WL})},
                                    with_batch(env.batch, true)};
  return specs;
}

nlohmann::json spec_to_json(const EngineSpec& spec) {
  auto tensors = [](const std::vector<TensorSpec>& ts) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& x : ts) {
      nlohmann::json dims = nlohmann::json::array();
      for (const auto& dim : x.dims) {
        if (std::holds_alternative<int>(dim)) dims.push_back(std::get<int>(dim));
        else dims.push_back(std::get<std::string>(dim));
      }
      a.push_back({{"name", x.name}, {"dtype", x.dtype}, {"dims", dims}});
    }
    return a;
  };
  const Envelope& e = spec.envelope;
  return {{"name", spec.name},
          {"inputs", tensors(spec.inputs)},
          {"outputs", tensors(spec.outputs)},
          {"envelope",
           {{"batch", range_json(e.batch)},
            {"height", range_json(e.height)},
            {"width", range_json(e.width)},
            {"latent_factor", e.latent_factor},
            {"multiple", e.multiple}}}};
}

EngineSpec spec_from_json(const nlohmann::json& d) {
  auto tensors = [](const nlohmann::json& ts) {
    std::vector<TensorSpec> out;
    for (const auto& x : ts) {
      TensorSpec s{x.at("name").get<std::string>(), x.at("dtype").get<std::string>(), {}};
      for (const auto& dim : x.at("dims")) {
        if (dim.is_number_integer()) s.dims.emplace_back(dim.get<int>());
        else s.dims.emplace_back(dim.get<std::string>());
      }
      out.push_back(std::move(s));
    }
    return out;
  };
  const auto& e = d.at("envelope");
  Envelope env{range_from(e.at("batch")), range_from(e.at("height")), range_from(e.at("width")),
               e.at("latent_factor").get<int>(), e.at("multiple").get<int>()};
  return EngineSpec{d.at("name").get<std::string>(), tensors(d.at("inputs")), tensors(d.at("outputs")), env};
}

std::string canonical_json(const EngineSpec& spec) {
  // nlohmann's objects are std::map (keys sorted) and dump() is compact: the same bytes as
  // Python's json.dumps(..., sort_keys=True, separators=(",", ":")) for this ASCII content.
  return spec_to_json(spec).dump();
}

namespace {
struct Md {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
  Md() { EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr); }
  void update(const void* p, size_t n) { EVP_DigestUpdate(ctx.get(), p, n); }
  std::string hex() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx.get(), out, &n);
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < n; ++i) {
      s += digits[out[i] >> 4];
      s += digits[out[i] & 15];
    }
    return s;
  }
};
}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Md md;
  md.update(bytes.data(), bytes.size());
  return md.hex();
}

std::string sha256_files(const std::vector<std::string>& paths) {
  Md md;
  std::vector<char> buf(1 << 20);
  for (const auto& p : paths) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw EngineError("cannot read " + p + ": check its permissions or re-export the engine folder");
    while (f) {
      f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      md.update(buf.data(), static_cast<size_t>(f.gcount()));
    }
  }
  return md.hex();
}

std::string fingerprint(const EngineSpec& spec) { return sha256_hex(canonical_json(spec)); }

std::map<std::string, Shape> concrete_shapes(const EngineSpec& spec, int batch, int height, int width) {
  const Envelope& env = spec.envelope;
  std::map<std::string, int64_t> values;
  const std::pair<std::string, std::pair<const std::optional<Range>*, int>> given[] = {
      {B, {&env.batch, batch}}, {H, {&env.height, height}}, {W, {&env.width, width}}};
  for (const auto& [sym, rv] : given) {
    const auto& r = *rv.first;
    int v = rv.second;
    if (!r) continue;
    if (!((*r)[0] <= v && v <= (*r)[2]) || (sym != B && v % env.multiple)) {
      std::string step = sym == B ? "" : " in steps of " + std::to_string(env.multiple);
      throw EngineError(spec.name + ": " + sym + " " + std::to_string(v) + " is outside the engine's envelope " +
                        std::to_string((*r)[0]) + ".." + std::to_string((*r)[2]) + step +
                        ": rebuild the engines with a wider envelope or request a size inside it");
    }
    values[sym] = v;
  }
  if (values.count(H)) values[HL] = values[H] / env.latent_factor;
  if (values.count(W)) values[WL] = values[W] / env.latent_factor;
  std::map<std::string, Shape> out;
  for (const auto* list : {&spec.inputs, &spec.outputs})
    for (const auto& ts : *list) {
      Shape s;
      for (const auto& dim : ts.dims)
        s.push_back(std::holds_alternative<int>(dim) ? std::get<int>(dim) : values.at(std::get<std::string>(dim)));
      out[ts.name] = s;
    }
  return out;
}

}  // namespace gligen
