// A generation request: the JSON schema of the Python CLI (gligen_rt/core/request.py) and its
// validation against a model. Every mistake is one RequestError line: the problem and the fix.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"

namespace gligen {

using Box = std::array<double, 4>;  // normalised (x0, y0, x1, y1)

struct GroundedObject {
  Box box{};
  std::optional<std::string> phrase;
  std::optional<std::string> image;
  bool has_phrase() const;  // a non-blank phrase
};

struct Person {
  std::vector<std::optional<std::array<double, 2>>> keypoints;  // 17, COCO order
};

struct GenerationRequest {
  std::string prompt;
  std::string negative_prompt;
  std::vector<GroundedObject> objects;
  std::vector<Person> persons;
  std::optional<std::string> condition, inpaint_image, style_image;
  uint64_t seed = 0;
  int64_t steps = 50;
  double guidance = 7.5;
  std::string sampler = "plms";
  std::optional<double> beta;
  std::optional<std::array<double, 3>> alpha_type;
  std::optional<int64_t> height, width;
  int64_t num_images = 1;
  int64_t feature_cache = 0;  // K >= 2: the whole UNet every K-th plain step, unet_shallow between
  int64_t feature_cache_grounded = 0;  // the same on grounded steps, unet_shallow_grounded between
};

// Parse (relative file paths resolve against base_dir when it is not empty); not yet validated.
GenerationRequest request_from_json(const nlohmann::json& d, const std::string& base_dir);
// Read and parse a JSON file (paths relative to its folder).
GenerationRequest request_from_file(const std::string& path);
// Check against a model: modality, inpainting, the largest size, the size multiple.
void validate(const GenerationRequest& r, Modality modality, bool inpaint, int max_size, int multiple);

}  // namespace gligen
