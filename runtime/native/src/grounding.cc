#include "grounding.h"

#include <cstring>

#include "error.h"
#include "image.h"

namespace gligen {

namespace {
const float kClipMean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float kClipStd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
constexpr Box kStyleBox = {0.0, 0.0, 1.0, 0.01};

// (H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]: (x / 255 - 0.5) / 0.5, each op in float32.
Tensor to_signed(const Image8& rgb) {
  Tensor t({3, rgb.height, rgb.width});
  const size_t hw = static_cast<size_t>(rgb.height) * rgb.width;
  for (size_t i = 0; i < hw; ++i)
    for (int c = 0; c < 3; ++c) {
      float x = static_cast<float>(rgb.pixels[i * 3 + c]) / 255.0f;
      t.data[c * hw + i] = (x - 0.5f) / 0.5f;
    }
  return t;
}

Inputs box_inputs(const std::vector<GroundedObject>& objects, const Tensor& phr, const std::optional<Tensor>& img,
                  bool text_image, const float* style, int dim) {
  Tensor boxes({kMaxObjects, 4}), masks({kMaxObjects}), text_masks({kMaxObjects}), image_masks({kMaxObjects});
  Tensor phrases({kMaxObjects, dim}), images({kMaxObjects, dim});
  size_t n = objects.size() + (style != nullptr);
  if (n > static_cast<size_t>(kMaxObjects))
    throw RequestError(std::to_string(n) + " grounded objects: at most 30 are supported, remove " +
                       std::to_string(n - kMaxObjects));
  int ip = 0, ii = 0;
  for (size_t i = 0; i < objects.size(); ++i) {
    const auto& o = objects[i];
    for (int k = 0; k < 4; ++k) boxes.data[i * 4 + k] = static_cast<float>(o.box[k]);
    masks.data[i] = 1.0f;
    if (o.has_phrase()) {
      std::memcpy(&phrases.data[i * dim], &phr.data[static_cast<size_t>(ip) * dim], dim * sizeof(float));
      text_masks.data[i] = 1.0f;
      ++ip;
    }
    if (text_image && o.image) {
      std::memcpy(&images.data[i * dim], &img->data[static_cast<size_t>(ii) * dim], dim * sizeof(float));
      image_masks.data[i] = 1.0f;
      ++ii;
    }
  }
  if (style) {
    size_t s = objects.size();
    for (int k = 0; k < 4; ++k) boxes.data[s * 4 + k] = static_cast<float>(kStyleBox[k]);
    masks.data[s] = 1.0f;
    std::memcpy(&images.data[s * dim], style, dim * sizeof(float));
    image_masks.data[s] = 1.0f;
  }
  Inputs out = {{"boxes", boxes}, {"masks", masks}, {"phrase_embeddings", phrases}};
  if (text_image) {
    out["text_masks"] = text_masks;
    out["image_masks"] = image_masks;
    out["image_embeddings"] = images;
  }
  return out;
}

Inputs keypoint_inputs(const std::vector<Person>& persons) {
  const int k = kMaxPersons * kNumKeypoints;
  Tensor points({k, 2}), masks({k});
  for (size_t p = 0; p < persons.size(); ++p)
    for (size_t j = 0; j < persons[p].keypoints.size(); ++j)
      if (const auto& kp = persons[p].keypoints[j]) {
        points.data[(p * kNumKeypoints + j) * 2] = static_cast<float>((*kp)[0]);
        points.data[(p * kNumKeypoints + j) * 2 + 1] = static_cast<float>((*kp)[1]);
      }
  for (int i = 0; i < k; ++i) {  // mask = mean(x, y) != 0, as numpy's float32 mean: (x + y) / 2
    float mean = (points.data[i * 2] + points.data[i * 2 + 1]) / 2.0f;
    masks.data[i] = mean != 0.0f ? 1.0f : 0.0f;
  }
  return {{"points", points}, {"masks", masks}};
}

Inputs stack_cfg(const Inputs& real, int64_t n) {
  Inputs out;
  for (const auto& [name, t] : real) {
    Tensor b;
    b.shape = t.shape;
    b.shape.insert(b.shape.begin(), 2 * n);
    b.data.assign(static_cast<size_t>(n) * t.data.size(), 0.0f);  // null half: zeros
    for (int64_t i = 0; i < n; ++i) b.data.insert(b.data.end(), t.data.begin(), t.data.end());
    out[name] = std::move(b);
  }
  return out;
}
}  // namespace

Tensor clip_image_input(const std::string& path, int size) {
  Image8 rgb = read_png(path, 3, "image");
  const int w = rgb.width, h = rgb.height;
  int new_w, new_h;
  if (w <= h) {
    new_w = size;
    new_h = static_cast<int>(static_cast<double>(size) * h / w);
  } else {
    new_w = static_cast<int>(static_cast<double>(size) * w / h);
    new_h = size;
  }
  rgb = resize(rgb, new_w, new_h, Filter::Bicubic);
  const int top = (new_h - size) / 2, left = (new_w - size) / 2;
  Tensor t({3, size, size});
  const size_t ss = static_cast<size_t>(size) * size;
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c) {
        float v = static_cast<float>(rgb.at(x + left, y + top, c)) / 255.0f;
        t.data[c * ss + static_cast<size_t>(y) * size + x] = (v - kClipMean[c]) / kClipStd[c];
      }
  return t;
}

Inputs condition_input(const std::string& path, Modality modality, int height, int width) {
  Tensor cond;
  if (modality == Modality::Sem) {
    Image8 labels = center_crop_to_aspect(read_png(path, 1, "condition"), height, width);
    labels = resize(labels, width, height, Filter::Nearest);
    int max_id = 0;
    for (uint8_t v : labels.pixels) max_id = std::max<int>(max_id, v);
    if (max_id >= kSemClasses)
      throw RequestError("the sem label map has class id " + std::to_string(max_id) +
                         ": ids must be below 152 (ADE20K label indices)");
    cond = Tensor({kSemClasses, height, width});
    const size_t hw = static_cast<size_t>(height) * width;
    for (size_t i = 0; i < hw; ++i) cond.data[labels.pixels[i] * hw + i] = 1.0f;
  } else {
    Image8 rgb = center_crop_to_aspect(read_png(path, 3, "condition"), height, width);
    cond = to_signed(resize(rgb, width, height, Filter::Bicubic));
  }
  return {{"condition", cond}, {"masks", Tensor({1}, 1.0f)}};
}

Tensor load_image(const std::string& path, int height, int width) {
  Image8 rgb = center_crop_to_aspect(read_png(path, 3, "image"), height, width);
  return to_signed(resize(rgb, width, height, Filter::Lanczos));
}

Tensor inpaint_mask(const std::vector<Box>& boxes, int h, int w) {
  Tensor mask({1, h, w}, 1.0f);
  for (const auto& b : boxes) {
    const float x0 = static_cast<float>(b[0]), y0 = static_cast<float>(b[1]);
    const float x1 = static_cast<float>(b[2]), y1 = static_cast<float>(b[3]);
    // int() truncation of float32 products; numpy slices clamp to the array
    auto clampi = [](int v, int n) { return std::max(0, std::min(v, n)); };
    int ya = clampi(static_cast<int>(y0 * static_cast<float>(h)), h), yb = clampi(static_cast<int>(y1 * static_cast<float>(h)), h);
    int xa = clampi(static_cast<int>(x0 * static_cast<float>(w)), w), xb = clampi(static_cast<int>(x1 * static_cast<float>(w)), w);
    for (int y = ya; y < yb; ++y)
      for (int x = xa; x < xb; ++x) mask.data[static_cast<size_t>(y) * w + x] = 0.0f;
  }
  return mask;
}

RequestInputs read_inputs(const GenerationRequest& r, const ModelConfig& config, int height, int width) {
  RequestInputs out;
  out.height = height;
  out.width = width;
  for (const auto& o : r.objects)
    if (o.has_phrase()) out.phrases.push_back(*o.phrase);
  if (config.modality == Modality::TextImageBox) {
    std::vector<std::string> paths;
    for (const auto& o : r.objects)
      if (o.image) paths.push_back(*o.image);
    if (r.style_image) paths.push_back(*r.style_image);
    if (!paths.empty()) {
      const int s = config.image_size;
      Tensor pv({static_cast<int64_t>(paths.size()), 3, s, s});
      pv.data.clear();
      for (const auto& p : paths) {
        Tensor one = clip_image_input(p, s);
        pv.data.insert(pv.data.end(), one.data.begin(), one.data.end());
      }
      out.pixel_values = std::move(pv);
    }
  }
  if (is_spatial(config.modality)) out.condition = condition_input(*r.condition, config.modality, height, width);
  if (config.inpaint) {
    const int f = config.vae_downscale;
    out.inpaint_image = load_image(*r.inpaint_image, height, width);
    std::vector<Box> boxes;
    for (const auto& o : r.objects) boxes.push_back(o.box);
    out.inpaint_mask = inpaint_mask(boxes, height / f, width / f);
  }
  return out;
}

Inputs grounding_inputs(const GenerationRequest& r, Modality modality, const RequestInputs& in,
                        const Tensor& phrase_emb, const std::optional<Tensor>& image_emb) {
  Inputs real;
  if (is_box(modality)) {
    const int dim = static_cast<int>(phrase_emb.shape.at(1));
    const float* style = nullptr;
    std::optional<Tensor> img = image_emb;
    if (r.style_image && image_emb) {
      const int64_t n = image_emb->shape[0];
      style = &image_emb->data[static_cast<size_t>(n - 1) * dim];
      img = image_emb->rows(0, n - 1);
    }
    real = box_inputs(r.objects, phrase_emb, img, modality == Modality::TextImageBox, style, dim);
  } else if (modality == Modality::Keypoint) {
    real = keypoint_inputs(r.persons);
  } else {
    real = *in.condition;
  }
  return stack_cfg(real, r.num_images);
}

}  // namespace gligen
