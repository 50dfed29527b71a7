// OpenVINO on the CPU through its C++ API (runtime/backend_openvino.py): the exported ONNX graphs
// compiled with precision hint f32 or bf16 and the latency hint, exactly the Python backend's
// properties, so both runtimes run the same compiled kernels (and share compiled blobs when
// $GLIGEN_RT_OPENVINO_CACHE names a folder). An InferRequest is not thread-safe:
// each engine keeps a pool of free requests. While a graph compiles, this process's resident pages
// of its mapped weight file are dropped (pages.h), so its weights are resident once, not twice.
#include <cstdlib>
#include <mutex>
#include <set>

#include <openvino/openvino.hpp>

#include "backend.h"
#include "error.h"
#include "pages.h"

namespace gligen {

namespace {
std::string first_line(const std::string& s) {
  auto p = s.find_first_not_of(" \n");
  std::string t = p == std::string::npos ? s : s.substr(p);
  return t.substr(0, t.find('\n'));
}

std::string trimmed(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\n") - b + 1);
}

struct Engine {
  ov::CompiledModel compiled;
  std::map<std::string, ov::Output<const ov::Node>> outputs;
  std::vector<ov::InferRequest> free;
  std::mutex lock;
};

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(bool bf16, int threads) : bf16_(bf16), threads_(threads) {
    const char* dir = std::getenv("GLIGEN_RT_OPENVINO_CACHE");  // engines/openvino.py ONNX_CACHE_ENV
    if (dir != nullptr) cache_dir_ = trimmed(dir);
  }
  std::string name() const override { return bf16_ ? "openvino-bf16" : "openvino"; }

  void load(const EngineFolder& folder, const std::vector<std::string>& engines) override {
    for (const auto& name : engines) {
      const EngineSpec& spec = folder.specs.at(name);
      auto e = std::make_unique<Engine>();
      ov::AnyMap config = {{ov::hint::inference_precision.name(), bf16_ ? ov::element::bf16 : ov::element::f32},
                           {ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY}};
      if (threads_ > 0) config[ov::inference_num_threads.name()] = threads_;
      try {
        const std::string graph = folder.onnx_path(name);
        MappedPagesDropped dropped({graph, graph + ".data"});
        if (cache_dir_.empty()) {
          e->compiled = core_.compile_model(graph, "CPU", config);
        } else {  // read first, so that the blob is keyed on the graph's content, not its file name
          config[ov::cache_dir.name()] = cache_dir_;
          e->compiled = core_.compile_model(core_.read_model(graph), "CPU", config);
        }
      } catch (const std::exception& ex) {
        throw EngineError("OpenVINO cannot compile " + folder.onnx_path(name) + " (" + first_line(ex.what()) +
                          "): re-export it");
      }
      std::set<std::string> in_names, out_names;
      for (const auto& p : e->compiled.inputs())
        for (const auto& n : p.get_names()) in_names.insert(n);
      for (const auto& p : e->compiled.outputs())
        for (const auto& n : p.get_names()) {
          out_names.insert(n);
          e->outputs.emplace(n, p);
        }
      bool ok = e->compiled.inputs().size() == spec.inputs.size();
      for (const auto& n : spec.input_names()) ok = ok && in_names.count(n);
      for (const auto& n : spec.output_names()) ok = ok && out_names.count(n);
      if (!ok) throw EngineError(name + ".onnx does not have the inputs/outputs of its spec: re-export");
      engines_[name] = std::move(e);
      specs[name] = spec;
    }
  }

  std::map<std::string, Tensor> run(const std::string& engine, const std::vector<Feed>& inputs) override {
    auto it = engines_.find(engine);
    if (it == engines_.end()) throw EngineError("engine '" + engine + "' is not loaded on " + name());
    Engine& e = *it->second;
    ov::InferRequest request;
    {
      std::lock_guard<std::mutex> g(e.lock);
      if (e.free.empty()) {
        request = e.compiled.create_infer_request();
      } else {
        request = std::move(e.free.back());
        e.free.pop_back();
      }
    }
    std::map<std::string, Tensor> out;
    try {
      for (const auto& f : inputs) {
        ov::Shape shape(f.shape.begin(), f.shape.end());
        ov::Tensor t = f.i32 ? ov::Tensor(ov::element::i32, shape, const_cast<int32_t*>(f.i32))
                             : ov::Tensor(ov::element::f32, shape, const_cast<float*>(f.f32));
        request.set_tensor(f.name, t);
      }
      request.infer();
      for (const auto& n : specs.at(engine).output_names()) {
        ov::Tensor t = request.get_tensor(e.outputs.at(n));
        const ov::Shape os = t.get_shape();
        Shape s(os.begin(), os.end());
        const float* p = t.data<const float>();
        out[n] = Tensor(s, std::vector<float>(p, p + t.get_size()));
      }
    } catch (const ov::Exception& ex) {
      std::lock_guard<std::mutex> g(e.lock);
      e.free.push_back(std::move(request));
      throw EngineError("OpenVINO failed to run " + engine + " (" + first_line(ex.what()) + ")");
    }
    std::lock_guard<std::mutex> g(e.lock);
    e.free.push_back(std::move(request));
    return out;
  }

 private:
  bool bf16_;
  int threads_;
  std::string cache_dir_;  // compiled blobs ($GLIGEN_RT_OPENVINO_CACHE); empty: no cache
  ov::Core core_;
  std::map<std::string, std::unique_ptr<Engine>> engines_;
};
}  // namespace

std::unique_ptr<Backend> make_openvino_backend(bool bf16, int threads) {
  try {
    return std::make_unique<OpenVinoBackend>(bf16, threads);
  } catch (const std::exception& e) {
    throw BackendUnavailable(std::string("OpenVINO cannot start (") + first_line(e.what()) + ")");
  }
}

}  // namespace gligen
