#include "backend.h"

#include "error.h"

namespace gligen {

namespace {
const char* const kAll[] = {"openvino", "openvino-bf16", "openvino-int8", "openvino-int8a", "ort-cpu", "tensorrt"};

bool is_openvino(const std::string& name) {
  return name == "openvino" || name == "openvino-bf16" || name == "openvino-int8" || name == "openvino-int8a";
}
}

std::string backend_unavailable_reason(const std::string& name) {
  if (is_openvino(name)) {
#ifdef GLIGEN_WITH_OPENVINO
    return "";
#else
    return "this build has no OpenVINO backend (OpenVINOConfig.cmake was not found: pip install openvino, then rebuild)";
#endif
  }
  if (name == "ort-cpu") {
#ifdef GLIGEN_WITH_ORT
    return "";
#else
    return "this build has no ONNX Runtime backend (onnxruntime_cxx_api.h was not found at configure time: "
           "run scripts/native_ort_headers.sh, then rebuild)";
#endif
  }
  if (name == "tensorrt") {
#ifdef GLIGEN_WITH_TENSORRT
    return "";
#else
    return "this build has no TensorRT backend (NvInfer.h, libnvinfer or CUDA were not found at configure time)";
#endif
  }
  std::string list;
  for (const char* b : kAll) list += std::string(list.empty() ? "" : ", ") + b;
  return "unknown backend '" + name + "': choose one of " + list;
}

std::vector<std::string> available_backends() {
  std::vector<std::string> out;
  for (const char* b : kAll)
    if (backend_unavailable_reason(b).empty()) out.push_back(b);
  return out;
}

std::unique_ptr<Backend> make_backend(const std::string& name, int threads) {
  const std::string why = backend_unavailable_reason(name);
  if (!why.empty()) throw BackendUnavailable(why);
#ifdef GLIGEN_WITH_OPENVINO
  if (is_openvino(name)) return make_openvino_backend(name, threads);
#endif
#ifdef GLIGEN_WITH_ORT
  if (name == "ort-cpu") return make_ort_backend(threads);
#endif
#ifdef GLIGEN_WITH_TENSORRT
  if (name == "tensorrt") return make_tensorrt_backend();
#endif
  (void)threads;
  throw BackendUnavailable(why);
}

}  // namespace gligen
