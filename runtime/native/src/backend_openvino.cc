// OpenVINO on the CPU through its C++ API (runtime/backend_openvino.py). Backends openvino (FP32),
// openvino-bf16, openvino-int8 (INT8 weights) and openvino-int8a (INT8 activations in the UNets):
// an engine built by `gligen-rt build --backend <name>` (DIR/<name>/<engine>.xml, the OpenVINO IR,
// with its manifest) is compiled from the IR with the precision hint its build recorded and its
// compiled-blob cache (DIR/<name>/cache); without a build, openvino and openvino-bf16 compile the
// exported ONNX graph (and share compiled blobs when $GLIGEN_RT_OPENVINO_CACHE names a folder),
// while openvino-int8 and openvino-int8a need their build. Compile properties are the Python
// backend's (precision hint, latency hint, threads), so both runtimes run the same compiled kernels.
// An InferRequest is not thread-safe: each engine keeps a pool of free requests. While a graph
// compiles and while it first runs, this process's resident pages of its mapped weight file are
// dropped (pages.h), so its weights are resident once, not twice.
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>

#include <openvino/openvino.hpp>

#include "backend.h"
#include "error.h"
#include "pages.h"
#include "spec.h"

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
  // A dynamic build of a per-shape engine (runtime/backend_openvino.py PER_SHAPE) is compiled at
  // the input shapes of its call, as the Python backend does, and again when they change.
  std::string per_shape_xml, per_shape_bin;
  ov::AnyMap config;
  std::string shapes;  // the shapes `compiled` was compiled for ("" before the first call)
  int generation = 0;  // bumped at each recompile: requests of an older one are not pooled again
  // The weight files whose pages the first inference of `compiled` faults in (the CPU plugin copies
  // some weights only then, e.g. a text encoder's): dropped during and after it; empty afterwards.
  std::vector<std::string> fresh;
};

// runtime/backend_openvino.py PER_SHAPE
bool per_shape_engine(const std::string& name) {
  return name == "grounding" || name == "unet" || name == "unet_plain" || name == "unet_shallow" ||
         name == "unet_shallow_grounded" ||
         name == "vae_decoder" || name == "vae_encoder";
}

// An engine's IR from `gligen-rt build` (engines/build.py, checked as runtime/folder.py built_spec
// and engines/manifest.py verify do): the manifest must describe this folder's graph and spec and
// this OpenVINO, the IR its recorded sizes.
struct BuiltIr {
  std::string xml, bin, cache_dir, precision_hint;
  EngineSpec spec;
  bool static_shapes = false;  // built with --static: compiled as it is
};

std::optional<BuiltIr> built_ir(const EngineFolder& folder, const std::string& build, const std::string& name) {
  namespace fs = std::filesystem;
  const std::string dir = folder.path + "/" + build;
  const std::string manifest_path = dir + "/" + name + ".json";
  if (!fs::is_regular_file(manifest_path)) return std::nullopt;
  const std::string fix = "rebuild with `gligen-rt build --onnx " + folder.path + " --backend " + build + "`";
  const nlohmann::json m = read_manifest(manifest_path, "engine manifest");
  const nlohmann::json onnx_m = read_manifest(folder.path + "/" + name + ".json", "engine manifest");
  BuiltIr ir;
  nlohmann::json builder;
  try {
    ir.spec = spec_from_json(m.at("spec"));
    ir.xml = dir + "/" + m.at("artifact").get<std::string>();
    builder = m.at("builder");
    ir.bin = dir + "/" + builder.at("weights_file").get<std::string>();
    ir.cache_dir = dir + "/" + builder.value("cache_dir", std::string("cache"));
    ir.precision_hint = builder.value("precision_hint", std::string(build == "openvino" ? "f32" : "bf16"));
    ir.static_shapes = builder.contains("shapes") && builder["shapes"].is_object() && !builder["shapes"].empty();
  } catch (const std::exception& e) {
    throw EngineError("corrupt engine manifest " + manifest_path + " (" + first_line(e.what()) + "): " + fix);
  }
  if (fingerprint(ir.spec) != m.value("spec_fingerprint", std::string()) ||
      ir.spec.input_names() != folder.specs.at(name).input_names() ||
      ir.spec.output_names() != folder.specs.at(name).output_names())
    throw EngineError(manifest_path + " does not match " + name + "'s spec: " + fix);
  if (m.value("onnx_sha256", std::string()) != onnx_m.value("onnx_sha256", std::string("?")))
    throw EngineError(build + "/" + name + " was built from another graph than " + name + ".onnx: " + fix);
  const auto libs = m.value("library_versions", nlohmann::json::object());
  const std::string linked = ov::get_openvino_version().buildNumber;
  if (libs.contains("openvino") && libs["openvino"].is_string() && libs["openvino"].get<std::string>() != linked)
    throw EngineError(m.value("artifact", name) + " was built for OpenVINO " + libs["openvino"].get<std::string>() +
                      " but " + linked + " is linked: " + fix);
  const auto check_size = [&](const std::string& path, const nlohmann::json& holder, const char* key) {
    if (!fs::is_regular_file(path)) throw EngineError(path + " is missing: " + fix);
    if (holder.contains(key) && holder[key].is_number_integer() &&
        fs::file_size(path) != holder[key].get<std::uintmax_t>())
      throw EngineError("corrupt " + path + ": " + std::to_string(fs::file_size(path)) +
                        " bytes but its manifest says " + std::to_string(holder[key].get<std::uintmax_t>()) + ": " +
                        fix);
  };
  check_size(ir.xml, m, "artifact_size");
  check_size(ir.bin, builder, "weights_size");
  if (ir.precision_hint != "f32" && ir.precision_hint != "bf16" && ir.precision_hint != "f16")
    throw EngineError(manifest_path + " records precision hint '" + ir.precision_hint + "': " + fix);
  return ir;
}

ov::element::Type hint_type(const std::string& hint) {
  return hint == "bf16" ? ov::element::bf16 : hint == "f16" ? ov::element::f16 : ov::element::f32;
}

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const std::string& build, int threads) : build_(build), threads_(threads) {
    const char* dir = std::getenv("GLIGEN_RT_OPENVINO_CACHE");  // engines/openvino.py ONNX_CACHE_ENV
    if (dir != nullptr) cache_dir_ = trimmed(dir);
  }
  std::string name() const override { return build_; }

  void load(const EngineFolder& folder, const std::vector<std::string>& engines) override {
    for (const auto& name : engines) {
      EngineSpec spec = folder.specs.at(name);
      auto e = std::make_unique<Engine>();
      const std::optional<BuiltIr> ir = built_ir(folder, build_, name);
      if (!ir && build_ != "openvino" && build_ != "openvino-bf16")
        throw EngineError(folder.path + " has no " + build_ + " build of " + name + ": run `gligen-rt build --onnx " +
                          folder.path + " --backend " + build_ + "`");
      const std::string hint = ir ? ir->precision_hint : build_ == "openvino" ? "f32" : "bf16";
      ov::AnyMap config = {{ov::hint::inference_precision.name(), hint_type(hint)},
                           {ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY}};
      if (threads_ > 0) config[ov::inference_num_threads.name()] = threads_;
      const std::string graph = ir ? ir->xml : folder.onnx_path(name);
      try {
        if (ir) {  // from the path: a cached blob then skips reading the model at all
          spec = ir->spec;
          std::filesystem::create_directories(ir->cache_dir);
          config[ov::cache_dir.name()] = ir->cache_dir;
          if (!ir->static_shapes && per_shape_engine(name)) {
            e->per_shape_xml = graph;
            e->per_shape_bin = ir->bin;
            e->config = config;
          } else {
            MappedPagesDropped dropped({graph, ir->bin});
            e->compiled = core_.compile_model(graph, "CPU", config);
            e->fresh = {graph, ir->bin};
          }
        } else if (cache_dir_.empty()) {
          MappedPagesDropped dropped({graph, graph + ".data"});
          e->compiled = core_.compile_model(graph, "CPU", config);
          e->fresh = {graph, graph + ".data"};
        } else {  // read first, so that the blob is keyed on the graph's content, not its file name
          MappedPagesDropped dropped({graph, graph + ".data"});
          // One folder per hint: OpenVINO keys a blob on the graph, not on the inference precision
          // (engines/openvino.py onnx_blob_cache says what a shared folder does).
          const std::string blobs = cache_dir_ + "/" + hint;
          std::filesystem::create_directories(blobs);
          config[ov::cache_dir.name()] = blobs;
          e->compiled = core_.compile_model(core_.read_model(graph), "CPU", config);
          e->fresh = {graph, graph + ".data"};
        }
      } catch (const std::exception& ex) {
        throw EngineError("OpenVINO cannot compile " + graph + " (" + first_line(ex.what()) + "): " +
                          (ir ? "rebuild it" : "re-export it"));
      }
      std::set<std::string> in_names, out_names;
      size_t inputs = 0;
      if (e->per_shape_xml.empty()) {
        inputs = e->compiled.inputs().size();
        for (const auto& p : e->compiled.inputs())
          for (const auto& n : p.get_names()) in_names.insert(n);
        for (const auto& p : e->compiled.outputs())
          for (const auto& n : p.get_names()) {
            out_names.insert(n);
            e->outputs.emplace(n, p);
          }
      } else {  // compiled at its first call; its I/O checked on the read model now
        std::shared_ptr<ov::Model> model;
        try {
          model = core_.read_model(graph);
        } catch (const std::exception& ex) {
          throw EngineError("OpenVINO cannot read " + graph + " (" + first_line(ex.what()) + "): rebuild it");
        }
        inputs = model->inputs().size();
        for (const auto& p : model->inputs())
          for (const auto& n : p.get_names()) in_names.insert(n);
        for (const auto& p : model->outputs())
          for (const auto& n : p.get_names()) out_names.insert(n);
      }
      bool ok = inputs == spec.inputs.size();
      for (const auto& n : spec.input_names()) ok = ok && in_names.count(n);
      for (const auto& n : spec.output_names()) ok = ok && out_names.count(n);
      if (!ok)
        throw EngineError(graph + " does not have the inputs/outputs of its spec: " +
                          (ir ? "rebuild it" : "re-export it"));
      engines_[name] = std::move(e);
      specs[name] = spec;
    }
  }

  std::map<std::string, Tensor> run(const std::string& engine, const std::vector<Feed>& inputs) override {
    auto it = engines_.find(engine);
    if (it == engines_.end()) throw EngineError("engine '" + engine + "' is not loaded on " + name());
    Engine& e = *it->second;
    ov::InferRequest request;
    int generation = 0;
    std::vector<std::string> fresh;
    {
      std::lock_guard<std::mutex> g(e.lock);
      if (!e.per_shape_xml.empty()) compile_for(e, inputs);
      generation = e.generation;
      fresh.swap(e.fresh);
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
      if (fresh.empty()) {
        request.infer();
      } else {  // the first inference of this compiled model
        MappedPagesDropped dropped(std::move(fresh));
        request.infer();
      }
      for (const auto& n : specs.at(engine).output_names()) {
        ov::Tensor t = request.get_tensor(e.outputs.at(n));
        const ov::Shape os = t.get_shape();
        Shape s(os.begin(), os.end());
        const float* p = t.data<const float>();
        out[n] = Tensor(s, std::vector<float>(p, p + t.get_size()));
      }
    } catch (const ov::Exception& ex) {
      std::lock_guard<std::mutex> g(e.lock);
      if (generation == e.generation) e.free.push_back(std::move(request));
      throw EngineError("OpenVINO failed to run " + engine + " (" + first_line(ex.what()) + ")");
    }
    std::lock_guard<std::mutex> g(e.lock);
    if (generation == e.generation) e.free.push_back(std::move(request));
    return out;
  }

 private:
  // A per-shape engine compiled for these inputs' shapes unless it already is (under e.lock).
  void compile_for(Engine& e, const std::vector<Feed>& inputs) {
    std::map<std::string, ov::PartialShape> shapes;
    std::string key;
    for (const auto& f : inputs) {
      shapes[f.name] = ov::PartialShape(std::vector<ov::Dimension>(f.shape.begin(), f.shape.end()));
      key += f.name + ":" + shapes[f.name].to_string() + ";";
    }
    if (key == e.shapes) return;
    e.free.clear();
    e.outputs.clear();
    e.compiled = ov::CompiledModel();  // the previous shape's compiled model first
    e.shapes.clear();
    ++e.generation;
    try {
      MappedPagesDropped dropped({e.per_shape_xml, e.per_shape_bin});
      std::shared_ptr<ov::Model> model = core_.read_model(e.per_shape_xml);
      model->reshape(shapes);
      e.compiled = core_.compile_model(model, "CPU", e.config);
    } catch (const std::exception& ex) {
      throw EngineError("OpenVINO cannot compile " + e.per_shape_xml + " for the shapes of this request (" +
                        first_line(ex.what()) + "): rebuild it");
    }
    for (const auto& p : e.compiled.outputs())
      for (const auto& n : p.get_names()) e.outputs.emplace(n, p);
    e.shapes = key;
    e.fresh = {e.per_shape_xml, e.per_shape_bin};
  }

 public:

 private:
  std::string build_;  // openvino | openvino-bf16 | openvino-int8 | openvino-int8a
  int threads_;
  std::string cache_dir_;  // compiled blobs ($GLIGEN_RT_OPENVINO_CACHE); empty: no cache
  ov::Core core_;
  std::map<std::string, std::unique_ptr<Engine>> engines_;
};
}  // namespace

std::unique_ptr<Backend> make_openvino_backend(const std::string& build, int threads) {
  try {
    return std::make_unique<OpenVinoBackend>(build, threads);
  } catch (const std::exception& e) {
    throw BackendUnavailable(std::string("OpenVINO cannot start (") + first_line(e.what()) + ")");
  }
}

}  // namespace gligen
