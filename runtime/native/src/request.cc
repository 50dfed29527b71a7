#include "request.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "error.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace gligen {

namespace {
const char* const kSamplers[] = {"plms", "ddim", "dpmpp_2m", "euler"};
constexpr int64_t kMaxSteps = 1000;

std::string repr(const json& v) {
  if (v.is_string()) return "'" + v.get<std::string>() + "'";
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  return v.dump();
}
std::string num(double v) {
  json j = v;
  return j.dump();
}
std::string type_name(const json& v) {
  if (v.is_array()) return "list";
  if (v.is_string()) return "str";
  if (v.is_boolean()) return "bool";
  if (v.is_number_integer()) return "int";
  if (v.is_number()) return "float";
  if (v.is_null()) return "NoneType";
  return "dict";
}

void check_keys(const json& d, const std::vector<std::string>& allowed, const std::string& where) {
  for (auto it = d.begin(); it != d.end(); ++it) {
    bool ok = false;
    for (const auto& a : allowed) ok |= a == it.key();
    if (!ok) {
      std::string list;
      for (size_t i = 0; i < allowed.size(); ++i) list += (i ? ", " : "") + allowed[i];
      throw RequestError("unknown key '" + it.key() + "' in " + where + ": allowed keys are " + list);
    }
  }
}
const json& as_dict(const json& v, const std::string& where) {
  if (!v.is_object()) throw RequestError(where + " must be a JSON object, got " + type_name(v));
  return v;
}
const json& as_list(const json& v, const std::string& where) {
  if (!v.is_array()) throw RequestError(where + " must be a JSON list, got " + repr(v));
  return v;
}
std::optional<std::string> as_str(const json& v, const std::string& where, bool optional = true) {
  if (v.is_null() && optional) return std::nullopt;
  if (!v.is_string()) throw RequestError(where + " must be a string, got " + repr(v));
  return v.get<std::string>();
}
double as_num(const json& v, const std::string& where) {
  if (!v.is_number()) throw RequestError(where + " must be a number, got " + repr(v));
  return v.get<double>();
}
int64_t as_int(const json& v, const std::string& where) {
  if (!v.is_number_integer()) throw RequestError(where + " must be an integer, got " + repr(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    throw RequestError(where + " " + v.dump() + " is too large: use a value below 2**63");
  return v.get<int64_t>();
}
std::vector<double> as_floats(const json& v, size_t n, const std::string& where) {
  const json& items = as_list(v, where);
  if (items.size() != n)
    throw RequestError(where + " must have " + std::to_string(n) + " numbers, got " + std::to_string(items.size()));
  std::vector<double> out;
  for (const auto& x : items) out.push_back(as_num(x, where));
  return out;
}
std::optional<std::string> resolve(const std::optional<std::string>& p, const std::string& base_dir) {
  if (!p) return p;
  std::string path = *p;
  if (!path.empty() && path[0] == '~') {
    const char* home = std::getenv("HOME");
    if (home && (path.size() == 1 || path[1] == '/')) path = std::string(home) + path.substr(1);
  }
  if (!base_dir.empty() && !path.empty() && path[0] != '/')
    path = (fs::path(base_dir) / path).lexically_normal().string();
  return path;
}

GroundedObject parse_object(const json& value, size_t i, const std::string& base_dir) {
  const std::string where = "objects[" + std::to_string(i) + "]";
  const json& d = as_dict(value, where);
  check_keys(d, {"phrase", "box", "image"}, where);
  if (!d.contains("box")) throw RequestError(where + " has no 'box': give [x0, y0, x1, y1] normalised to [0, 1]");
  GroundedObject o;
  auto b = as_floats(d["box"], 4, where + ".box");
  std::copy(b.begin(), b.end(), o.box.begin());
  o.phrase = as_str(d.value("phrase", json()), where + ".phrase");
  o.image = resolve(as_str(d.value("image", json()), where + ".image"), base_dir);
  return o;
}

Person parse_person(const json& value, size_t i) {
  const std::string where = "persons[" + std::to_string(i) + "]";
  const json& d = as_dict(value, where);
  check_keys(d, {"keypoints"}, where);
  if (!d.contains("keypoints"))
    throw RequestError(where + " has no 'keypoints': give 17 [x, y] pairs (null for missing)");
  Person p;
  size_t j = 0;
  for (const auto& kp : as_list(d["keypoints"], where + ".keypoints")) {
    if (kp.is_null()) {
      p.keypoints.emplace_back(std::nullopt);
    } else {
      auto xy = as_floats(kp, 2, where + ".keypoints[" + std::to_string(j) + "]");
      p.keypoints.emplace_back(std::array<double, 2>{xy[0], xy[1]});
    }
    ++j;
  }
  return p;
}

void check_readable(const std::optional<std::string>& path, const std::string& what) {
  if (!path || path->empty()) throw RequestError(what + " must be a file path, got None");
  if (!fs::exists(*path))
    throw RequestError(what + " '" + *path +
                       "' does not exist: check the path (relative paths in a JSON file resolve against its folder)");
  if (!fs::is_regular_file(*path)) throw RequestError(what + " '" + *path + "' is not a file: give the path of an image file");
  std::ifstream f(*path, std::ios::binary);
  char c;
  if (!f || (!f.read(&c, 1) && !f.eof()))
    throw RequestError(what + " '" + *path + "' cannot be read: fix its permissions");
}

double finite(double x, const std::string& what) {
  if (!std::isfinite(x)) throw RequestError(what + " is " + num(x) + ": give a finite number (no NaN or Inf)");
  return x;
}

std::string tuple_str(const double* v, size_t n) {
  std::string s = "(";
  for (size_t i = 0; i < n; ++i) s += (i ? ", " : "") + num(v[i]);
  return s + ")";
}

void check_box(const Box& box, const std::string& what) {
  for (double v : box) finite(v, what);
  double lo = std::min(std::min(box[0], box[1]), std::min(box[2], box[3]));
  double hi = std::max(std::max(box[0], box[1]), std::max(box[2], box[3]));
  if (lo < 0.0 || hi > 1.0)
    throw RequestError(what + " " + tuple_str(box.data(), 4) +
                       " is outside [0, 1]: give coordinates normalised by the image width and height");
  if (box[0] >= box[2] || box[1] >= box[3])
    throw RequestError(what + " " + tuple_str(box.data(), 4) +
                       " is empty or flipped: need x0 < x1 and y0 < y1 (order x0, y0, x1, y1)");
}

void check_size(const std::optional<int64_t>& value, const std::string& name, int multiple, int max_size) {
  if (!value) return;
  int64_t v = *value;
  if (v < multiple || v % multiple) {
    int64_t suggestion = std::max<int64_t>(multiple, std::llround(static_cast<double>(v) / multiple) * multiple);
    throw RequestError(name + " " + std::to_string(v) + " is not a positive multiple of " + std::to_string(multiple) +
                       ": use e.g. " + std::to_string(suggestion));
  }
  if (max_size > 0 && v > max_size)
    throw RequestError(name + " " + std::to_string(v) + " is larger than " + std::to_string(max_size) +
                       ", the largest this model/engine accepts: lower it or rebuild the engines for a larger size");
}
}  // namespace

bool GroundedObject::has_phrase() const {
  if (!phrase) return false;
  for (char c : *phrase)
    if (!std::isspace(static_cast<unsigned char>(c))) return true;
  return false;
}

GenerationRequest request_from_json(const json& d, const std::string& base_dir) {
  check_keys(d, {"prompt", "negative_prompt", "objects", "persons", "condition", "inpaint_image", "style_image",
                 "seed", "steps", "guidance", "sampler", "beta", "alpha_type", "height", "width", "num_images",
                 "feature_cache", "feature_cache_grounded"},
             "the request");
  if (!d.contains("prompt")) throw RequestError("the request has no 'prompt': add \"prompt\": \"...\" (it may be empty)");
  GenerationRequest r;
  r.prompt = *as_str(d["prompt"], "prompt", false);
  if (d.contains("negative_prompt")) r.negative_prompt = *as_str(d["negative_prompt"], "negative_prompt", false);
  if (d.contains("objects") && !d["objects"].is_null()) {
    size_t i = 0;
    for (const auto& o : as_list(d["objects"], "objects")) r.objects.push_back(parse_object(o, i++, base_dir));
  }
  if (d.contains("persons") && !d["persons"].is_null()) {
    size_t i = 0;
    for (const auto& p : as_list(d["persons"], "persons")) r.persons.push_back(parse_person(p, i++));
  }
  if (d.contains("condition")) r.condition = resolve(as_str(d["condition"], "condition"), base_dir);
  if (d.contains("inpaint_image")) r.inpaint_image = resolve(as_str(d["inpaint_image"], "inpaint_image"), base_dir);
  if (d.contains("style_image")) r.style_image = resolve(as_str(d["style_image"], "style_image"), base_dir);
  if (d.contains("seed")) {
    const json& s = d["seed"];
    if (!s.is_number_integer()) throw RequestError("seed must be an integer, got " + repr(s));
    if (s.is_number_unsigned()) r.seed = s.get<uint64_t>();
    else if (s.get<int64_t>() < 0) throw RequestError("seed must be a non-negative integer, got " + s.dump());
    else r.seed = static_cast<uint64_t>(s.get<int64_t>());
  }
  if (d.contains("steps")) r.steps = as_int(d["steps"], "steps");
  if (d.contains("num_images")) r.num_images = as_int(d["num_images"], "num_images");
  if (d.contains("feature_cache")) r.feature_cache = as_int(d["feature_cache"], "feature_cache");
  if (d.contains("feature_cache_grounded"))
    r.feature_cache_grounded = as_int(d["feature_cache_grounded"], "feature_cache_grounded");
  if (d.contains("height") && !d["height"].is_null()) r.height = as_int(d["height"], "height");
  if (d.contains("width") && !d["width"].is_null()) r.width = as_int(d["width"], "width");
  if (d.contains("guidance")) r.guidance = as_num(d["guidance"], "guidance");
  if (d.contains("sampler")) r.sampler = *as_str(d["sampler"], "sampler", false);
  if (d.contains("beta") && !d["beta"].is_null()) r.beta = as_num(d["beta"], "beta");
  if (d.contains("alpha_type") && !d["alpha_type"].is_null()) {
    auto a = as_floats(d["alpha_type"], 3, "alpha_type");
    r.alpha_type = std::array<double, 3>{a[0], a[1], a[2]};
  }
  return r;
}

GenerationRequest request_from_file(const std::string& path) {
  if (!fs::exists(path)) throw RequestError("request file '" + path + "' does not exist: check the path");
  std::ifstream f(path, std::ios::binary);
  if (!f || fs::is_directory(path))
    throw RequestError("request file '" + path + "' cannot be read: check the path and its permissions");
  std::stringstream ss;
  ss << f.rdbuf();
  json d;
  try {
    d = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    std::string msg = e.what();
    auto p = msg.find("parse error");
    throw RequestError("request file '" + path + "' is not valid JSON: " + (p == std::string::npos ? msg : msg.substr(p)));
  }
  if (!d.is_object()) throw RequestError("request file '" + path + "' must be a JSON object, got " + type_name(d));
  return request_from_json(d, fs::absolute(path).parent_path().string());
}

void validate(const GenerationRequest& r, Modality modality, bool inpaint, int max_size, int multiple) {
  const std::string mname = modality_name(modality);
  // objects
  if (!is_box(modality)) {
    if (!r.objects.empty())
      throw RequestError("objects were given but the " + mname +
                         " model takes no boxes: remove 'objects' or use a box model");
  } else {
    size_t count = r.objects.size();
    std::string note;
    if (modality == Modality::TextImageBox && r.style_image) {
      ++count;
      note = " (the style image counts as one)";
    }
    if (count > static_cast<size_t>(kMaxObjects))
      throw RequestError(std::to_string(count) + " grounded objects" + note + ": at most 30 are supported, remove " +
                         std::to_string(count - kMaxObjects));
    if (inpaint && r.objects.empty())
      throw RequestError("inpainting needs at least one object: its box marks the region to generate");
    for (size_t i = 0; i < r.objects.size(); ++i) {
      const auto& o = r.objects[i];
      const std::string what = "objects[" + std::to_string(i) + "]";
      check_box(o.box, what + ".box");
      if (modality == Modality::TextBox) {
        if (!o.has_phrase()) throw RequestError(what + " has no phrase: the text-box model needs a phrase for every box");
        if (o.image)
          throw RequestError(what + " has an image but the text-box model takes phrases only: remove 'image' or use a text-image-box model");
      } else {
        if (!o.has_phrase() && !o.image) throw RequestError(what + " has neither a phrase nor an image: give one or both");
        if (o.image) check_readable(o.image, what + ".image");
      }
    }
  }
  // persons
  if (!r.persons.empty() && modality != Modality::Keypoint)
    throw RequestError("persons were given but the " + mname +
                       " model takes no keypoints: remove 'persons' or use the keypoint model");
  if (r.persons.size() > static_cast<size_t>(kMaxPersons))
    throw RequestError(std::to_string(r.persons.size()) + " persons: at most 8 are supported, remove " +
                       std::to_string(r.persons.size() - kMaxPersons));
  for (size_t i = 0; i < r.persons.size(); ++i) {
    const std::string what = "persons[" + std::to_string(i) + "]";
    const auto& kps = r.persons[i].keypoints;
    if (kps.size() != static_cast<size_t>(kNumKeypoints))
      throw RequestError(what + " has " + std::to_string(kps.size()) +
                         " keypoints: give exactly 17 in COCO order (null for a missing one)");
    for (size_t j = 0; j < kps.size(); ++j) {
      if (!kps[j]) continue;
      const std::string w = what + ".keypoints[" + std::to_string(j) + "]";
      double x = finite((*kps[j])[0], w), y = finite((*kps[j])[1], w);
      if (!(0.0 <= x && x <= 1.0 && 0.0 <= y && y <= 1.0))
        throw RequestError(w + " " + tuple_str(kps[j]->data(), 2) +
                           " is outside [0, 1]: give coordinates normalised by the image size");
    }
  }
  // condition / inpainting / style
  if (is_spatial(modality)) {
    if (!r.condition)
      throw RequestError("the " + mname + " model needs a condition map: set 'condition' to an image path");
    check_readable(r.condition, "condition");
  } else if (r.condition) {
    throw RequestError("a condition map was given but the " + mname +
                       " model does not take one: remove 'condition' or use a spatial model");
  }
  if (inpaint) {
    if (!r.inpaint_image)
      throw RequestError("the inpainting model needs an image to inpaint: set 'inpaint_image' to an image path");
    check_readable(r.inpaint_image, "inpaint_image");
  } else if (r.inpaint_image) {
    throw RequestError("inpaint_image was given but the model is not an inpainting model: remove it or load an inpainting checkpoint");
  }
  if (r.style_image) {
    if (modality != Modality::TextImageBox)
      throw RequestError("style_image works only with the text-image-box model, not " + mname + ": remove it");
    check_readable(r.style_image, "style_image");
  }
  // numbers
  if (r.steps < 1 || r.steps > kMaxSteps)
    throw RequestError("steps must be an integer in [1, 1000], got " + std::to_string(r.steps));
  finite(r.guidance, "guidance");
  if (r.guidance < 0.0)
    throw RequestError("guidance " + num(r.guidance) + " is negative: use 0 or more (1 = no guidance, 7.5 typical)");
  bool known = false;
  for (const char* s : kSamplers) known |= r.sampler == s;
  if (!known) throw RequestError("unknown sampler '" + r.sampler + "': choose one of plms, ddim, dpmpp_2m, euler");
  if (r.beta && r.alpha_type)
    throw RequestError("both beta and alpha_type are set: give one scheduled-sampling form, not both");
  if (r.beta) {
    double b = finite(*r.beta, "beta");
    if (!(0.0 <= b && b <= 1.0))
      throw RequestError("beta " + num(b) + " is outside [0, 1]: it is the fraction of steps that use grounding");
  }
  if (r.alpha_type) {
    const auto& a = *r.alpha_type;
    for (double v : a) finite(v, "alpha_type");
    double lo = std::min({a[0], a[1], a[2]}), hi = std::max({a[0], a[1], a[2]});
    if (lo < 0.0 || hi > 1.0 || std::abs(a[0] + a[1] + a[2] - 1.0) > 1e-6)
      throw RequestError("alpha_type [" + num(a[0]) + ", " + num(a[1]) + ", " + num(a[2]) +
                         "] must be 3 fractions in [0, 1] summing to 1 (grounded, decaying, plain steps)");
  }
  check_size(r.height, "height", multiple, max_size);
  check_size(r.width, "width", multiple, max_size);
  if (r.num_images < 1) throw RequestError("num_images must be an integer >= 1, got " + std::to_string(r.num_images));
  for (const auto& [key, value, steps] : {std::tuple{"feature_cache", r.feature_cache, "plain"},
                                          std::tuple{"feature_cache_grounded", r.feature_cache_grounded, "grounded"}})
    if (value < 0 || value > kMaxSteps)
      throw RequestError(std::string(key) + " must be an integer in [0, " + std::to_string(kMaxSteps) +
                         "] (0: off; K: the whole UNet every K-th " + steps + " step), got " + std::to_string(value));
}

}  // namespace gligen
