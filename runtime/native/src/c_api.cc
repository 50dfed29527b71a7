// The C API (include/gligen_rt.h) over gligen::Pipeline: every exception is caught here and becomes
// a status and a thread-local one-line message.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <sstream>

#include "gligen_rt.h"
#include "error.h"
#include "image.h"
#include "inspect.h"
#include "pipeline.h"

struct gligen_rt_pipeline {
  gligen::Pipeline pipeline;
};

namespace {
thread_local std::string g_last_error;

gligen_rt_status status_of(gligen::ErrorKind k) {
  switch (k) {
    case gligen::ErrorKind::Request: return GLIGEN_RT_ERROR_REQUEST;
    case gligen::ErrorKind::Engine: return GLIGEN_RT_ERROR_ENGINE;
    case gligen::ErrorKind::Backend: return GLIGEN_RT_ERROR_BACKEND;
    case gligen::ErrorKind::Numerical: return GLIGEN_RT_ERROR_NUMERICAL;
  }
  return GLIGEN_RT_ERROR_INTERNAL;
}

template <class F>
gligen_rt_status guarded(F f) {
  g_last_error.clear();
  try {
    f();
    return GLIGEN_RT_OK;
  } catch (const gligen::Error& e) {
    g_last_error = e.what();
    return status_of(e.kind());
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory: lower the image size or num_images";
  } catch (const std::exception& e) {
    g_last_error = std::string("internal error: ") + gligen::Error::one_line(e.what());
  } catch (...) {
    g_last_error = "internal error: unknown exception";
  }
  return GLIGEN_RT_ERROR_INTERNAL;
}

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (!p) throw std::bad_alloc();
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

void fill(const gligen::GenerationResult& r, gligen_rt_images* out) {
  nlohmann::json t = r.timings;
  t["step_times"] = r.step_times;
  out->timings_json = dup(t.dump());
  out->rgb = static_cast<unsigned char*>(std::malloc(r.rgb.size()));
  if (!out->rgb) {
    std::free(out->timings_json);
    out->timings_json = nullptr;
    throw std::bad_alloc();
  }
  std::memcpy(out->rgb, r.rgb.data(), r.rgb.size());
  out->num_images = r.num_images;
  out->height = r.height;
  out->width = r.width;
}

void require(const void* p, const char* what) {
  if (!p) throw gligen::RequestError(std::string(what) + " is NULL: pass a valid pointer");
}
}  // namespace

extern "C" {

const char* gligen_rt_last_error(void) { return g_last_error.c_str(); }
const char* gligen_rt_version(void) { return "0.1.0"; }

const char* gligen_rt_backends(void) {
  static const std::string list = [] {
    std::string s;
    for (const auto& b : gligen::available_backends()) s += (s.empty() ? "" : ",") + b;
    return s;
  }();
  return list.c_str();
}

gligen_rt_status gligen_rt_open(const char* engine_dir, const char* backend, int threads, gligen_rt_pipeline** out) {
  return guarded([&] {
    require(engine_dir, "engine_dir");
    require(backend, "backend");
    require(out, "out");
    *out = nullptr;
    gligen::PipelineOptions options;
    options.threads = threads;
    *out = new gligen_rt_pipeline{gligen::Pipeline(engine_dir, backend, options)};
  });
}

void gligen_rt_close(gligen_rt_pipeline* pipeline) { delete pipeline; }

gligen_rt_status gligen_rt_generate(gligen_rt_pipeline* pipeline, const char* request_json, const char* base_dir,
                                    gligen_rt_images* out) {
  return guarded([&] {
    require(pipeline, "pipeline");
    require(request_json, "request_json");
    require(out, "out");
    *out = gligen_rt_images{};
    nlohmann::json d;
    try {
      d = nlohmann::json::parse(request_json);
    } catch (const nlohmann::json::parse_error& e) {
      throw gligen::RequestError(std::string("the request is not valid JSON: ") + e.what());
    }
    if (!d.is_object()) throw gligen::RequestError("the request must be a JSON object");
    auto request = gligen::request_from_json(d, base_dir ? base_dir : "");
    fill(pipeline->pipeline.generate(request), out);
  });
}

gligen_rt_status gligen_rt_generate_file(gligen_rt_pipeline* pipeline, const char* request_path, const char* out_png,
                                         gligen_rt_images* out) {
  return guarded([&] {
    require(pipeline, "pipeline");
    require(request_path, "request_path");
    if (out) *out = gligen_rt_images{};
    auto request = gligen::request_from_file(request_path);
    auto result = pipeline->pipeline.generate(request);
    if (out_png) {
      const auto paths = gligen::output_paths(out_png, result.num_images);
      const size_t per = static_cast<size_t>(result.height) * result.width * 3;
      for (size_t i = 0; i < paths.size(); ++i)
        gligen::write_png_atomic(paths[i], result.rgb.data() + i * per, result.width, result.height);
    }
    if (out) fill(result, out);
  });
}

gligen_rt_status gligen_rt_check_request_file(const char* request_path) {
  return guarded([&] {
    require(request_path, "request_path");
    gligen::request_from_file(request_path);
  });
}

gligen_rt_status gligen_rt_check_request(const char* engine_dir, const char* request_path) {
  return guarded([&] {
    require(engine_dir, "engine_dir");
    require(request_path, "request_path");
    const auto request = gligen::request_from_file(request_path);
    const auto folder = gligen::EngineFolder::open(engine_dir, /*check_sha256=*/false);
    gligen::check_request(folder.config, folder.specs, request);
  });
}

void gligen_rt_images_free(gligen_rt_images* images) {
  if (!images) return;
  std::free(images->rgb);
  std::free(images->timings_json);
  *images = gligen_rt_images{};
}

gligen_rt_status gligen_rt_inspect(const char* engine_dir, char** text) {
  return guarded([&] {
    require(engine_dir, "engine_dir");
    require(text, "text");
    *text = nullptr;
    std::string s;
    for (const auto& line : gligen::inspect_lines(engine_dir)) s += line + "\n";
    *text = dup(s);
  });
}

void gligen_rt_free(void* p) { std::free(p); }

}  // extern "C"
