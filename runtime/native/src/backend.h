// Backends behind three verbs (runtime/backend.py): load the engines of a folder, run one of them,
// close. The pipeline never branches on the backend. Inputs and outputs are host tensors at the
// engines' boundary dtypes (float32; int32 token ids).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "folder.h"
#include "tensor.h"

namespace gligen {

struct Feed {
  std::string name;
  Shape shape;
  const float* f32 = nullptr;    // float32 data, or
  const int32_t* i32 = nullptr;  // int32 data (token ids)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Load `engines` of `folder` (EngineError / BackendUnavailable, one line).
  virtual void load(const EngineFolder& folder, const std::vector<std::string>& engines) = 0;
  // Run one engine; outputs by name, float32. Safe to call from several threads at once.
  virtual std::map<std::string, Tensor> run(const std::string& engine, const std::vector<Feed>& inputs) = 0;
  bool has(const std::string& engine) const { return specs.count(engine) > 0; }
  std::map<std::string, EngineSpec> specs;  // the loaded engines
};

// Backend names: openvino, openvino-bf16, openvino-int8, openvino-int8a, ort-cpu, tensorrt (each only
// when compiled in; the two int8 ones need their `gligen-rt build`).
std::unique_ptr<Backend> make_backend(const std::string& name, int threads);
std::vector<std::string> available_backends();
// Why a backend is not available in this build ("" when it is).
std::string backend_unavailable_reason(const std::string& name);

// Factories of the compiled-in backends (defined in backend_<library>.cc).
std::unique_ptr<Backend> make_openvino_backend(const std::string& build, int threads);
std::unique_ptr<Backend> make_ort_backend(int threads);
std::unique_ptr<Backend> make_tensorrt_backend();

}  // namespace gligen
