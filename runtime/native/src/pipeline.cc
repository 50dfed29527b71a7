#include "pipeline.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "clip_tokenizer.h"
#include "error.h"
#include "grounding.h"
#include "noise.h"
#include "schedule.h"
#include "schedulers.h"

namespace gligen {

namespace {
constexpr int kSizeMultiple = 64;  // 3 UNet downsamplings of a latent that is 1/8 of the image

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A backend's run, adding each call's seconds to a per-request and a per-engine total.
struct TimedRun {
  Backend& backend;
  double total = 0.0;
  std::map<std::string, double> per_engine{};
  std::map<std::string, Tensor> operator()(const std::string& engine, const std::vector<Feed>& feeds) {
    const double tic = now();
    auto out = backend.run(engine, feeds);
    const double dt = now() - tic;
    total += dt;
    per_engine[engine] += dt;
    return out;
  }
  double engine_time(const std::string& e) const {
    auto it = per_engine.find(e);
    return it == per_engine.end() ? 0.0 : it->second;
  }
};

Feed feed(const std::string& name, const Tensor& t) { return Feed{name, t.shape, t.data.data(), nullptr}; }

Tensor draw(NormalStream& rng, const Shape& shape) {
  Tensor t(shape);
  rng.fill(t.data.data(), t.data.size());
  return t;
}

// Concatenate (B, C1, h, w) and (B, C2, h, w) along axis 1.
Tensor concat1(const Tensor& a, const Tensor& b) {
  const int64_t B = a.shape[0], ra = a.size() / B, rb = b.size() / B;
  Tensor out({B, a.shape[1] + b.shape[1], a.shape[2], a.shape[3]});
  out.data.clear();
  for (int64_t i = 0; i < B; ++i) {
    out.data.insert(out.data.end(), a.data.begin() + i * ra, a.data.begin() + (i + 1) * ra);
    out.data.insert(out.data.end(), b.data.begin() + i * rb, b.data.begin() + (i + 1) * rb);
  }
  return out;
}

// x (B, C, h, w) op mask (B, 1, h, w), broadcast over channels.
template <class F>
Tensor with_mask(const Tensor& x, const Tensor& mask, F f) {
  Tensor out(x.shape);
  const int64_t B = x.shape[0], C = x.shape[1], hw = x.shape[2] * x.shape[3];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < hw; ++i) {
        const size_t k = static_cast<size_t>((b * C + c) * hw + i);
        out.data[k] = f(x.data[k], mask.data[static_cast<size_t>(b * hw + i)], k);
      }
  return out;
}

bool all_finite(const Tensor& t) {
  for (float v : t.data)
    if (!std::isfinite(v)) return false;
  return true;
}
}  // namespace

std::vector<uint8_t> to_uint8(const Tensor& images) {
  if (!all_finite(images))
    throw NumericalError("the decoded images contain NaN or Inf: try fp32 engines, another seed, or fewer steps at fp16");
  const int64_t B = images.shape[0], C = images.shape[1], H = images.shape[2], W = images.shape[3];
  std::vector<uint8_t> out(static_cast<size_t>(B * H * W * 3));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < H * W; ++i) {
        float x = images.data[static_cast<size_t>((b * C + c) * H * W + i)];
        x = x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);
        x = x * 0.5f + 0.5f;
        out[static_cast<size_t>((b * H * W + i) * 3 + c)] = static_cast<uint8_t>(std::nearbyint(x * 255.0f));
      }
  return out;
}

std::vector<std::string> output_paths(const std::string& out, int n) {
  if (n == 1) return {out};
  std::filesystem::path p(out);
  std::string ext = p.extension().string();
  std::string stem = (p.parent_path() / p.stem()).string();
  std::vector<std::string> paths;
  for (int i = 0; i < n; ++i) paths.push_back(stem + "_" + std::to_string(i) + (ext.empty() ? ".png" : ext));
  return paths;
}

Pipeline::Pipeline(const std::string& engine_dir, const std::string& backend, const PipelineOptions& options)
    : folder_(EngineFolder::open(engine_dir, options.check_sha256)) {
  const std::string tok_dir = folder_.tokenizer_dir();
  if (!std::filesystem::is_directory(tok_dir))
    throw EngineError(tok_dir + " is missing: re-export the engine folder (it carries the tokenizer)");
  try {
    tokenizer_ = std::make_unique<ClipTokenizer>(ClipTokenizer::from_folder(tok_dir));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw EngineError("cannot read the tokenizer in " + tok_dir + " (" + Error::one_line(e.what()) + "): re-export");
  }
  backend_ = make_backend(backend, options.threads);
  std::vector<std::string> engines;
  for (const auto& n : folder_.engines)
    if (!(options.single_unet && n == kUnetPlain)) engines.push_back(n);
  backend_->load(folder_, engines);
}

Pipeline::~Pipeline() = default;

int max_size(const std::map<std::string, EngineSpec>& specs) {
  int m = 1 << 30;
  for (const auto& [name, spec] : specs)
    for (const auto* r : {&spec.envelope.height, &spec.envelope.width})
      if (*r) m = std::min(m, (**r)[2]);
  return m;
}

std::pair<int, int> check_request(const ModelConfig& cfg, const std::map<std::string, EngineSpec>& specs,
                                  const GenerationRequest& r) {
  validate(r, cfg.modality, cfg.inpaint, max_size(specs), kSizeMultiple);
  const int H = static_cast<int>(r.height.value_or(cfg.default_size));
  const int W = static_cast<int>(r.width.value_or(cfg.default_size));
  const int n = static_cast<int>(r.num_images);
  int n_phr = 0, n_img = r.style_image ? 1 : 0;
  for (const auto& o : r.objects) {
    n_phr += o.has_phrase();
    n_img += o.image.has_value();
  }
  const int unet_batch = r.guidance != 1.0 ? 2 * n : n;
  const std::map<std::string, int> batches = {{kTextEncoder, 2 + n_phr}, {kImageEncoder, n_img}, {kGrounding, 2 * n},
                                              {kUnet, unet_batch},       {kUnetPlain, unet_batch}, {kVaeDecoder, n},
                                              {kVaeEncoder, 1},          {kUnetShallow, unet_batch},
                                              {kUnetShallowGrounded, unet_batch}};
  for (const auto& [name, spec] : specs)
    if (batches.at(name) > 0) concrete_shapes(spec, batches.at(name), H, W);
  if (r.feature_cache >= 2 && !specs.count(kUnetShallow))
    throw RequestError("feature_cache " + std::to_string(r.feature_cache) +
                       " needs engines exported with `gligen-rt export --feature-cache` (this folder has no "
                       "unet_shallow): re-export, or drop it");
  if (r.feature_cache_grounded >= 2 && !specs.count(kUnetShallowGrounded))
    throw RequestError("feature_cache_grounded " + std::to_string(r.feature_cache_grounded) +
                       " needs engines exported with `gligen-rt export --feature-cache` by this version (this "
                       "folder has no unet_shallow_grounded): re-export, or drop it");
  return {H, W};
}

int Pipeline::max_size() const { return gligen::max_size(backend_->specs); }

std::pair<int, int> Pipeline::check_request(const GenerationRequest& r) const {
  return gligen::check_request(folder_.config, backend_->specs, r);
}

GenerationResult Pipeline::generate(const GenerationRequest& r) {
  const ModelConfig& cfg = folder_.config;
  const double t0 = now();
  const auto [H, W] = check_request(r);
  const int64_t n = r.num_images;
  const int f = cfg.vae_downscale;
  const int64_t h = H / f, w = W / f;
  const Shape latent_shape = {n, cfg.latent_channels, h, w};
  const RequestInputs host = read_inputs(r, cfg, H, W);
  TimedRun run{*backend_};
  GenerationResult result;
  auto& timings = result.timings;
  NormalStream rng(r.seed);

  // text encoder on [negative, prompt, *phrases]
  double tic = now();
  std::vector<std::string> texts = {r.negative_prompt, r.prompt};
  texts.insert(texts.end(), host.phrases.begin(), host.phrases.end());
  IntTensor ids{{static_cast<int64_t>(texts.size()), kTextTokens}, {}};
  for (const auto& text : texts) {
    std::vector<int32_t> one = tokenizer_->encode(text);
    ids.data.insert(ids.data.end(), one.begin(), one.end());
  }
  auto text = run(kTextEncoder, {Feed{"input_ids", ids.shape, nullptr, ids.data.data()}});
  const Tensor& lhs = text.at("last_hidden_state");
  const Tensor context = lhs.rows(0, 2);
  const Tensor& pooled = text.at("pooled");
  const Tensor phrase_emb = pooled.rows(2, pooled.shape[0]);
  timings["text_encoder"] = now() - tic;

  tic = now();
  std::optional<Tensor> image_emb;
  if (host.pixel_values)
    image_emb = run(kImageEncoder, {feed("pixel_values", *host.pixel_values)}).at("image_features");
  timings["image_encoder"] = now() - tic;

  tic = now();
  Inputs ginputs = grounding_inputs(r, cfg.modality, host, phrase_emb, image_emb);
  std::vector<Feed> gfeeds;
  for (const auto& name : backend_->specs.at(kGrounding).input_names()) gfeeds.push_back(feed(name, ginputs.at(name)));
  auto gout = run(kGrounding, gfeeds);
  const Tensor tokens = gout.at("tokens");
  std::optional<Tensor> extra;
  if (gout.count("extra")) {  // spatial: both CFG halves take the real map's downsampler output
    Tensor real = gout.at("extra").rows(n, 2 * n);
    extra = concat0({&real, &real});
  }
  timings["grounding"] = now() - tic;

  Tensor x = draw(rng, latent_shape);
  std::optional<Tensor> z0, mask, step_noise;
  if (cfg.inpaint) {
    tic = now();
    Tensor image = *host.inpaint_image;
    image.shape.insert(image.shape.begin(), 1);
    auto enc = run(kVaeEncoder, {feed("images", image)});
    const Tensor &mean = enc.at("mean"), &std_ = enc.at("std");
    Tensor noise = draw(rng, mean.shape);
    Tensor one(mean.shape);
    for (size_t i = 0; i < one.data.size(); ++i) one.data[i] = mean.data[i] + std_.data[i] * noise.data[i];
    std::vector<const Tensor*> parts(static_cast<size_t>(n), &one);
    z0 = concat0(parts);
    std::vector<const Tensor*> mparts(static_cast<size_t>(n), &*host.inpaint_mask);
    Tensor m = concat0(mparts);
    m.shape = {n, 1, h, w};
    mask = m;
    Tensor z0m = with_mask(*z0, *mask, [](float a, float b, size_t) { return a * b; });
    extra = concat1(z0m, *mask);
    timings["vae_encoder"] = now() - tic;
  }

  auto scheduler = make_scheduler(r.sampler, static_cast<int>(r.steps));
  const auto gates = request_gates(r.beta, r.alpha_type, cfg.modality, cfg.inpaint,
                                   static_cast<int>(scheduler->timesteps().size()));
  const auto plan = make_plan(scheduler->timesteps(), gates, backend_->has(kUnetPlain), r.feature_cache,
                              r.feature_cache_grounded);
  if (cfg.inpaint) {
    Shape s = latent_shape;
    s.insert(s.begin(), static_cast<int64_t>(plan.size()));
    step_noise = draw(rng, s);  // one latents() draw per step, in step order: the same stream
  }

  const Tensor c_u = context.rows(0, 1), c_c = context.rows(1, 2);
  std::vector<const Tensor*> cparts;
  for (int64_t i = 0; i < n; ++i) cparts.push_back(&c_u);
  for (int64_t i = 0; i < n; ++i) cparts.push_back(&c_c);
  Tensor ctx = concat0(cparts);
  if (cfg.inpaint) {
    Tensor e = *extra;
    extra = concat0({&e, &e});
  }
  const double guidance = r.guidance;
  const bool guided = guidance != 1.0;
  Tensor cond_tokens = tokens;
  if (!guided) {  // conditional half only
    ctx = ctx.rows(n, 2 * n);
    cond_tokens = tokens.rows(n, 2 * n);
    if (extra) extra = extra->rows(n, 2 * n);
  }

  const float sigma0 = static_cast<float>(scheduler->init_noise_sigma());
  for (float& v : x.data) v = v * sigma0;
  auto unet_time = [&] { return run.engine_time(kUnet) + run.engine_time(kUnetPlain) + run.engine_time(kUnetShallow) +
                           run.engine_time(kUnetShallowGrounded); };
  const double unet_before = unet_time();
  std::optional<Tensor> deep;  // the feature cache: `deep` of the last whole-UNet call
  tic = now();
  const float g32 = static_cast<float>(guidance);
  for (const PlanStep& step : plan) {
    const double step_tic = now();
    if (cfg.inpaint) {
      const int64_t per = numel(latent_shape);
      Tensor noise_i(latent_shape, std::vector<float>(step_noise->data.begin() + step.index * per,
                                                      step_noise->data.begin() + (step.index + 1) * per));
      Tensor known = scheduler->add_noise(*z0, noise_i, step.index);
      x = with_mask(x, *mask, [&](float xv, float m, size_t k) { return known.data[k] * m + xv * (1.0f - m); });
    }
    const Tensor gate({1}, static_cast<float>(step.gate));
    const auto names = backend_->specs.at(step.engine).input_names();
    EpsFn eps_fn = [&](const Tensor& x_in, double t) {
      Tensor sample = guided ? concat0({&x_in, &x_in}) : x_in;
      const Tensor timestep({1}, static_cast<float>(t));
      std::vector<Feed> feeds;
      for (const auto& name : names) {
        if (name == "sample") feeds.push_back(feed(name, sample));
        else if (name == "timestep") feeds.push_back(feed(name, timestep));
        else if (name == "context") feeds.push_back(feed(name, ctx));
        else if (name == "tokens") feeds.push_back(feed(name, cond_tokens));
        else if (name == "gate") feeds.push_back(feed(name, gate));
        else if (name == "extra") feeds.push_back(feed(name, *extra));
        else if (name == "deep" && deep) feeds.push_back(feed(name, *deep));
        else if (name == "deep") throw EngineError(step.engine + " has no deep features yet: the plan must run a whole UNet first");
        else throw EngineError(step.engine + " has an input '" + name + "' the runtime does not know: re-export");
      }
      auto outs = run(step.engine, feeds);
      if (auto it = outs.find("deep"); it != outs.end()) deep = std::move(it->second);
      Tensor e = std::move(outs.at("eps"));
      if (!guided) return e;
      const int64_t half = e.shape[0] / 2;
      Tensor out = e.rows(0, half);
      const size_t m = out.data.size();
      for (size_t k = 0; k < m; ++k) {
        const float e_u = e.data[k], e_c = e.data[m + k];
        out.data[k] = e_u + g32 * (e_c - e_u);
      }
      return out;
    };
    x = scheduler->step(x, step.index, eps_fn);
    result.step_times.push_back(now() - step_tic);
  }
  timings["denoise"] = now() - tic;
  timings["unet"] = unet_time() - unet_before;

  if (!all_finite(x))
    throw NumericalError("NaN or Inf in the latents: try fp32 engines or another seed; nothing was saved");
  tic = now();
  Tensor decoded = run(kVaeDecoder, {feed("latents", x)}).at("images");
  timings["vae_decoder"] = now() - tic;
  result.rgb = to_uint8(decoded);
  result.latents = std::move(x);
  result.num_images = static_cast<int>(n);
  result.height = H;
  result.width = W;
  timings["engines"] = run.total;
  timings["total"] = now() - t0;
  timings["overhead"] = timings["total"] - run.total;
  return result;
}

}  // namespace gligen
