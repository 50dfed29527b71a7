// ONNX Runtime's CPU provider through its C++ API (runtime/backend_ort.py, engines/ort.py): each
// exported graph in one session at ORT_ENABLE_ALL with the Python backend's thread settings.
// Session::Run is thread-safe, so concurrent calls share only the session.
#include <onnxruntime_cxx_api.h>

#include <set>

#include "backend.h"
#include "error.h"

namespace gligen {

namespace {
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

class OrtBackend : public Backend {
 public:
  explicit OrtBackend(int threads) : env_(ORT_LOGGING_LEVEL_ERROR, "gligen_rt"), threads_(threads) {}
  std::string name() const override { return "ort-cpu"; }

  void load(const EngineFolder& folder, const std::vector<std::string>& engines) override {
    for (const auto& name : engines) {
      const EngineSpec& spec = folder.specs.at(name);
      Ort::SessionOptions so;
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      if (threads_ > 0) {
        so.SetIntraOpNumThreads(threads_);
        so.SetInterOpNumThreads(1);
      }
      std::unique_ptr<Ort::Session> session;
      try {
        session = std::make_unique<Ort::Session>(env_, folder.onnx_path(name).c_str(), so);
      } catch (const Ort::Exception& e) {
        throw EngineError("ONNX Runtime cannot load " + folder.onnx_path(name) + " (" + first_line(e.what()) +
                          "): re-export it");
      }
      std::set<std::string> ins, outs;
      Ort::AllocatorWithDefaultOptions alloc;
      for (size_t i = 0; i < session->GetInputCount(); ++i) ins.insert(session->GetInputNameAllocated(i, alloc).get());
      for (size_t i = 0; i < session->GetOutputCount(); ++i) outs.insert(session->GetOutputNameAllocated(i, alloc).get());
      bool ok = ins.size() == spec.inputs.size();
      for (const auto& n : spec.input_names()) ok = ok && ins.count(n);
      for (const auto& n : spec.output_names()) ok = ok && outs.count(n);
      if (!ok) throw EngineError(name + ".onnx does not have the inputs/outputs of its spec: re-export");
      sessions_[name] = std::move(session);
      specs[name] = spec;
    }
  }

  std::map<std::string, Tensor> run(const std::string& engine, const std::vector<Feed>& inputs) override {
    auto it = sessions_.find(engine);
    if (it == sessions_.end()) throw EngineError("engine '" + engine + "' is not loaded on ort-cpu");
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names;
    for (const auto& f : inputs) {
      const size_t n = static_cast<size_t>(numel(f.shape));
      if (f.i32)
        values.push_back(Ort::Value::CreateTensor<int32_t>(mem, const_cast<int32_t*>(f.i32), n, f.shape.data(), f.shape.size()));
      else
        values.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(f.f32), n, f.shape.data(), f.shape.size()));
      in_names.push_back(f.name.c_str());
    }
    const auto out_names_s = specs.at(engine).output_names();
    std::vector<const char*> out_names;
    for (const auto& n : out_names_s) out_names.push_back(n.c_str());
    std::map<std::string, Tensor> out;
    try {
      auto results = it->second->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                                     out_names.data(), out_names.size());
      for (size_t i = 0; i < results.size(); ++i) {
        auto info = results[i].GetTensorTypeAndShapeInfo();
        Shape s = info.GetShape();
        const float* p = results[i].GetTensorData<float>();
        out[out_names_s[i]] = Tensor(s, std::vector<float>(p, p + info.GetElementCount()));
      }
    } catch (const Ort::Exception& e) {
      throw EngineError("ONNX Runtime failed to run " + engine + " (" + first_line(e.what()) + ")");
    }
    return out;
  }

 private:
  Ort::Env env_;
  int threads_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
};
}  // namespace

std::unique_ptr<Backend> make_ort_backend(int threads) {
  try {
    return std::make_unique<OrtBackend>(threads);
  } catch (const std::exception& e) {
    throw BackendUnavailable(std::string("ONNX Runtime cannot start (") + first_line(e.what()) + ")");
  }
}

}  // namespace gligen
