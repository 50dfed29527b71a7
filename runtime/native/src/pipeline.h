// The native pipeline: an engine folder + a backend -> images, step for step the Python runtime's
// GligenPipeline (runtime/pipeline.py, runtime/loop.py): validate; text encoder on [negative,
// prompt, *phrases]; image encoder; grounding tokens once for [null; real]; the plan; the loop
// (CFG in one batch); VAE decode; NaN check. Same noise in the same order, so the same seed gives
// the Python runtime's image on the same engine folder and backend.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "folder.h"
#include "request.h"
#include "tensor.h"

namespace gligen {

class ClipTokenizer;

struct PipelineOptions {
  int threads = 0;            // backend inference threads (0: the library's default, all cores)
  bool check_sha256 = true;   // hash every graph at open (sizes are always checked)
  bool single_unet = false;   // run gate-0 steps on `unet` with gate 0 (no unet_plain loaded)
};

struct GenerationResult {
  int num_images = 0, height = 0, width = 0;
  std::vector<uint8_t> rgb;          // (N, H, W, 3) uint8
  Tensor latents;                    // (N, 4, H/8, W/8) the final denoised latents
  std::map<std::string, double> timings;  // seconds per stage, "engines", "overhead", "total"
  std::vector<double> step_times;    // seconds of every denoising step
};

// The request checked against a model and the specs of the engines that will run it (envelopes,
// batch): what Pipeline::check_request does, without a loaded engine. (height, width).
std::pair<int, int> check_request(const ModelConfig& config, const std::map<std::string, EngineSpec>& specs,
                                  const GenerationRequest& request);
// The largest height / width every spec's envelope admits.
int max_size(const std::map<std::string, EngineSpec>& specs);

class Pipeline {
 public:
  Pipeline(const std::string& engine_dir, const std::string& backend, const PipelineOptions& options = {});
  ~Pipeline();

  // Validate against the model and every loaded engine's envelope; (height, width).
  std::pair<int, int> check_request(const GenerationRequest& request) const;
  GenerationResult generate(const GenerationRequest& request);

  const EngineFolder& folder() const { return folder_; }
  const Backend& backend() const { return *backend_; }
  int max_size() const;

 private:
  EngineFolder folder_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<ClipTokenizer> tokenizer_;
};

// Decoded images (B, 3, H, W) about [-1, 1] -> (B, H, W, 3) uint8 as the Python runtime rounds them
// (clamp, * 0.5 + 0.5, * 255, round half to even); NumericalError on NaN / Inf.
std::vector<uint8_t> to_uint8(const Tensor& images);

// Where n images go: [out] for one, else out_0.png, out_1.png, ... (gligen_rt.core.imageio.output_paths).
std::vector<std::string> output_paths(const std::string& out, int n);

}  // namespace gligen
