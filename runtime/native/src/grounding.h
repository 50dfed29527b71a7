// Grounding inputs and image preprocessing of one request (port of gligen_rt/core/grounding.py and
// runtime/inputs.py): boxes, keypoints, condition maps (sem one-hot), CLIP image preprocessing,
// the inpainting image and mask. Builders return one unbatched example; stack_cfg adds the
// classifier-free-guidance batch [null x n; real x n]. All float32.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "request.h"
#include "tensor.h"

namespace gligen {

using Inputs = std::map<std::string, Tensor>;

struct RequestInputs {
  int height = 0, width = 0;
  std::vector<std::string> phrases;          // the objects' non-blank phrases, in object order
  std::optional<Tensor> pixel_values;        // (n_img, 3, S, S) CLIP-normalised
  std::optional<Inputs> condition;           // {"condition": (Cc, H, W), "masks": (1,)}
  std::optional<Tensor> inpaint_image;       // (3, H, W) in [-1, 1]
  std::optional<Tensor> inpaint_mask;        // (1, h, w), 1 = keep
};

// Read every file the request names (RequestError, one line, when one cannot be decoded).
RequestInputs read_inputs(const GenerationRequest& r, const ModelConfig& config, int height, int width);

// The grounding engine's inputs for the CFG batch (2n, ...).
// phrase_emb: (n_phrases, D); image_emb: (n_img, D) or empty (style image's row last when given).
Inputs grounding_inputs(const GenerationRequest& r, Modality modality, const RequestInputs& in,
                        const Tensor& phrase_emb, const std::optional<Tensor>& image_emb);

Tensor clip_image_input(const std::string& path, int size);
Inputs condition_input(const std::string& path, Modality modality, int height, int width);
Tensor load_image(const std::string& path, int height, int width);
Tensor inpaint_mask(const std::vector<Box>& boxes, int h, int w);

}  // namespace gligen
