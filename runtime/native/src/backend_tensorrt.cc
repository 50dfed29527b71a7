// TensorRT plans through NvInfer.h (runtime/backend_tensorrt.py): DIR/tensorrt/<engine>.plan from
// `gligen-rt build --backend tensorrt`, checked against its manifest (built from this folder's
// graph, same spec I/O, the installed TensorRT version). One CUDA stream for every engine;
// enqueueV3 with device buffers owned per engine (grown on demand); a static engine (min = opt =
// max) whose build recorded no control flow (manifest builder.control_flow == [], as
// engines/tensorrt.py cuda_graph_allowed) is captured into a CUDA graph on its first call and
// replayed afterwards: an engine with If layers (the gate-skip UNet) never is, since a graph would
// replay the branch taken at capture. Host tensors in
// and out: copies on the stream, one synchronize per call. Compiled only where CMake finds
// TensorRT and CUDA.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <mutex>
#include <sstream>

#include "backend.h"
#include "error.h"

namespace gligen {

namespace {
void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw EngineError(what + " failed (CUDA: " + cudaGetErrorString(e) + ")");
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity s, const char* msg) noexcept override {
    if (s <= Severity::kERROR && last_error.empty()) last_error = msg;
  }
  std::string last_error;
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

struct Plan {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  std::map<std::string, DeviceBuffer> buffers;
  bool capturable = false;  // static and without control flow: captured into a CUDA graph
  cudaGraphExec_t graph = nullptr;
  std::mutex lock;  // an execution context and its buffers serve one call at a time
  ~Plan() {
    if (graph) cudaGraphExecDestroy(graph);
  }
};

bool static_spec(const EngineSpec& s) {
  for (const auto* r : {&s.envelope.batch, &s.envelope.height, &s.envelope.width})
    if (*r && (**r)[0] != (**r)[2]) return false;
  return true;
}

class TensorRtBackend : public Backend {
 public:
  TensorRtBackend() {
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw BackendUnavailable("TensorRT cannot start (createInferRuntime failed)");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~TensorRtBackend() override {
    plans_.clear();
    if (stream_) cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "tensorrt"; }

  void load(const EngineFolder& folder, const std::vector<std::string>& engines) override {
    const std::string dir = folder.path + "/tensorrt";
    const std::string fix = "build it with `gligen-rt build --onnx " + folder.path + " --backend tensorrt`";
    const std::string version = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                                std::to_string(NV_TENSORRT_PATCH);
    for (const auto& name : engines) {
      const std::string plan_path = dir + "/" + name + ".plan";
      std::ifstream f(plan_path, std::ios::binary);
      if (!f) throw EngineError(dir + " holds no TensorRT plan for " + name + ": " + fix);
      const nlohmann::json m = read_manifest(dir + "/" + name + ".json", "engine manifest");
      const nlohmann::json onnx_m = read_manifest(folder.path + "/" + name + ".json", "engine manifest");
      if (m.value("onnx_sha256", std::string()) != onnx_m.value("onnx_sha256", std::string("?")))
        throw EngineError("tensorrt/" + name + " was built from another graph than " + name + ".onnx: " + fix);
      EngineSpec spec;
      try {
        spec = spec_from_json(m.at("spec"));
      } catch (const std::exception& e) {
        throw EngineError("corrupt engine manifest " + dir + "/" + name + ".json (" + e.what() + "): " + fix);
      }
      if (fingerprint(spec) != m.value("spec_fingerprint", std::string()) ||
          spec.input_names() != folder.specs.at(name).input_names() ||
          spec.output_names() != folder.specs.at(name).output_names())
        throw EngineError(dir + "/" + name + ".json does not match " + name + "'s spec: " + fix);
      const auto libs = m.value("library_versions", nlohmann::json::object());
      if (libs.contains("tensorrt") && libs["tensorrt"].is_string() &&
          libs["tensorrt"].get<std::string>().rfind(version, 0) != 0)
        throw EngineError(name + ".plan was built for TensorRT " + libs["tensorrt"].get<std::string>() + " but " +
                          version + " is linked: " + fix);
      std::stringstream ss;
      ss << f.rdbuf();
      const std::string bytes = ss.str();
      auto plan = std::make_unique<Plan>();
      logger_.last_error.clear();
      plan->engine.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
      if (!plan->engine)
        throw EngineError("TensorRT cannot deserialize " + plan_path + " (" + logger_.last_error + "): " + fix);
      plan->context.reset(plan->engine->createExecutionContext());
      if (!plan->context) throw EngineError("TensorRT cannot create a context for " + name + ": " + fix);
      const auto builder = m.value("builder", nlohmann::json::object());
      const bool no_control_flow = builder.is_object() && builder.contains("control_flow") &&
                                   builder["control_flow"].is_array() && builder["control_flow"].empty();
      plan->capturable = static_spec(spec) && no_control_flow;
      plans_[name] = std::move(plan);
      specs[name] = spec;
    }
  }

  std::map<std::string, Tensor> run(const std::string& engine, const std::vector<Feed>& inputs) override {
    auto it = plans_.find(engine);
    if (it == plans_.end()) throw EngineError("engine '" + engine + "' is not loaded on tensorrt");
    Plan& p = *it->second;
    std::lock_guard<std::mutex> guard(p.lock);
    for (const auto& in : inputs) {
      nvinfer1::Dims d{};
      d.nbDims = static_cast<int32_t>(in.shape.size());
      for (size_t i = 0; i < in.shape.size(); ++i) d.d[i] = in.shape[i];
      if (!p.context->setInputShape(in.name.c_str(), d))
        throw EngineError(engine + ": input " + in.name + " shape " + shape_str(in.shape) +
                          " is outside the plan's profile: rebuild with a wider envelope");
      const size_t bytes = static_cast<size_t>(numel(in.shape)) * 4;
      DeviceBuffer& b = p.buffers[in.name];
      if (!p.capturable || !p.graph) b.reserve(bytes);
      cuda_check(cudaMemcpyAsync(b.ptr, in.i32 ? static_cast<const void*>(in.i32) : in.f32, bytes,
                                 cudaMemcpyHostToDevice, stream_),
                 "copy of " + in.name);
      p.context->setTensorAddress(in.name.c_str(), b.ptr);
    }
    const auto out_names = specs.at(engine).output_names();
    std::vector<Shape> out_shapes;
    for (const auto& n : out_names) {
      const nvinfer1::Dims d = p.context->getTensorShape(n.c_str());
      Shape s(d.d, d.d + d.nbDims);
      out_shapes.push_back(s);
      DeviceBuffer& b = p.buffers[n];
      if (!p.capturable || !p.graph) b.reserve(static_cast<size_t>(numel(s)) * 4);
      p.context->setTensorAddress(n.c_str(), b.ptr);
    }
    if (p.graph) {
      cuda_check(cudaGraphLaunch(p.graph, stream_), "cudaGraphLaunch of " + engine);
    } else {
      if (!p.context->enqueueV3(stream_)) throw EngineError("TensorRT failed to run " + engine);
      if (p.capturable) {  // first call done (TensorRT's lazy setup): capture the next ones
        cudaGraph_t g = nullptr;
        cuda_check(cudaStreamSynchronize(stream_), "synchronize");
        if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
          const bool ok = p.context->enqueueV3(stream_);
          if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && ok && g) {
            if (cudaGraphInstantiate(&p.graph, g, 0) != cudaSuccess) p.graph = nullptr;
          }
          if (g) cudaGraphDestroy(g);
          cudaGetLastError();  // a failed capture leaves the engine on plain enqueueV3
        }
      }
    }
    std::map<std::string, Tensor> out;
    for (size_t i = 0; i < out_names.size(); ++i) {
      Tensor t(out_shapes[i]);
      cuda_check(cudaMemcpyAsync(t.data.data(), p.buffers[out_names[i]].ptr, t.data.size() * 4, cudaMemcpyDeviceToHost,
                                 stream_),
                 "copy of " + out_names[i]);
      out[out_names[i]] = std::move(t);
    }
    cuda_check(cudaStreamSynchronize(stream_), "synchronize after " + engine);
    return out;
  }

 private:
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  cudaStream_t stream_ = nullptr;
  std::map<std::string, std::unique_ptr<Plan>> plans_;
};
}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend() { return std::make_unique<TensorRtBackend>(); }

}  // namespace gligen
