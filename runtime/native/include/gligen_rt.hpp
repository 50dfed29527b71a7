// gligen_rt: the native GLIGEN runtime's C++ API, a thin RAII layer over the C API (gligen_rt.h):
// failures become gligen_rt::Error (status + one-line message).
//
//   gligen_rt::Pipeline pipe("engines/", "openvino");
//   gligen_rt::Images im = pipe.generate(R"({"prompt": "a cat", "seed": 1})");
//   im.rgb()  // num_images * height * width * 3 bytes
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "gligen_rt.h"

namespace gligen_rt {

class Error : public std::runtime_error {
 public:
  Error(gligen_rt_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  gligen_rt_status status() const { return status_; }

 private:
  gligen_rt_status status_;
};

inline void check(gligen_rt_status s) {
  if (s != GLIGEN_RT_OK) throw Error(s, gligen_rt_last_error());
}

class Images {
 public:
  Images() = default;
  Images(const Images&) = delete;
  Images& operator=(const Images&) = delete;
  Images(Images&& o) noexcept : im_(o.im_) { o.im_ = gligen_rt_images{}; }
  ~Images() { gligen_rt_images_free(&im_); }
  int num_images() const { return im_.num_images; }
  int height() const { return im_.height; }
  int width() const { return im_.width; }
  const unsigned char* rgb() const { return im_.rgb; }
  std::string timings_json() const { return im_.timings_json ? im_.timings_json : "{}"; }
  gligen_rt_images* raw() { return &im_; }

 private:
  gligen_rt_images im_{};
};

class Pipeline {
 public:
  Pipeline(const std::string& engine_dir, const std::string& backend, int threads = 0) {
    check(gligen_rt_open(engine_dir.c_str(), backend.c_str(), threads, &p_));
  }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;
  Pipeline(Pipeline&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ~Pipeline() { gligen_rt_close(p_); }

  Images generate(const std::string& request_json, const std::string& base_dir = "") {
    Images im;
    check(gligen_rt_generate(p_, request_json.c_str(), base_dir.empty() ? nullptr : base_dir.c_str(), im.raw()));
    return im;
  }
  Images generate_file(const std::string& request_path, const std::string& out_png) {
    Images im;
    check(gligen_rt_generate_file(p_, request_path.c_str(), out_png.c_str(), im.raw()));
    return im;
  }

 private:
  gligen_rt_pipeline* p_ = nullptr;
};

inline std::string inspect(const std::string& engine_dir) {
  char* text = nullptr;
  check(gligen_rt_inspect(engine_dir.c_str(), &text));
  std::string out = text;
  gligen_rt_free(text);
  return out;
}

}  // namespace gligen_rt
