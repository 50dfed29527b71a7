// gligen-rt-native: the native runtime's command line, over the C++ API (gligen_rt.hpp).
//
//   gligen-rt-native generate --engines DIR --request FILE.json --out out.png [--backend openvino]
//                             [--threads N] [--repeat N] [--print-timings]
//   gligen-rt-native inspect DIR
//   gligen-rt-native backends
//
// Any user mistake (bad request, engine folder, missing backend, NaN) prints one line
// "error: ..." on stderr and exits 2 with no file written; anything else exits 1.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "gligen_rt.hpp"

namespace {
const char* kUsage =
    "usage: gligen-rt-native generate --engines DIR --request FILE.json --out OUT.png\n"
    "                                 [--backend openvino|openvino-bf16|openvino-int8|openvino-int8a|ort-cpu|tensorrt] [--threads N]\n"
    "                                 [--repeat N] [--print-timings]\n"
    "       gligen-rt-native inspect DIR\n"
    "       gligen-rt-native backends\n";

int fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return code;
}

struct UsageError {
  std::string message;
};

struct OutputError {  // the output cannot be written: one line, exit 2, before any engine loads
  std::string message;
};

int parse_int(const std::string& flag, const std::string& v) {
  try {
    size_t pos = 0;
    int n = std::stoi(v, &pos);
    if (pos == v.size() && n >= 0) return n;
  } catch (const std::exception&) {
  }
  throw UsageError{flag + " must be a non-negative integer, got '" + v + "'"};
}

int generate(const std::vector<std::string>& args) {
  std::string engines, request, out, backend = "openvino";
  int threads = 0, repeat = 1;
  bool print_timings = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw UsageError{a + " needs a value"};
      return args[++i];
    };
    if (a == "--engines") engines = value();
    else if (a == "--request") request = value();
    else if (a == "--out") out = value();
    else if (a == "--backend") backend = value();
    else if (a == "--threads") threads = parse_int(a, value());
    else if (a == "--repeat") repeat = std::max(1, parse_int(a, value()));
    else if (a == "--print-timings") print_timings = true;
    else throw UsageError{"unknown argument '" + a + "'"};
  }
  if (engines.empty() || request.empty() || out.empty())
    throw UsageError{"generate needs --engines DIR, --request FILE.json and --out OUT.png"};
  // Cheap, before any engine loads (compiling an SD-size folder takes tens of seconds): the request
  // against the folder's manifests, and the output's folder.
  gligen_rt::check(gligen_rt_check_request(engines.c_str(), request.c_str()));
  const std::filesystem::path out_dir = std::filesystem::absolute(out).parent_path();
  if (!std::filesystem::is_directory(out_dir) || access(out_dir.c_str(), W_OK) != 0)
    throw OutputError{"cannot write '" + out + "' (" + out_dir.string() +
                      " is not a writable folder): choose an existing, writable folder"};
  gligen_rt::Pipeline pipe(engines, backend, threads);
  for (int r = 0; r < repeat; ++r) {
    gligen_rt::Images im = pipe.generate_file(request, out);
    if (print_timings) std::printf("%s\n", im.timings_json().c_str());
  }
  std::fflush(stdout);
  std::fprintf(stderr, "saved %s\n", out.c_str());
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  try {
    if (cmd == "generate") return generate(args);
    if (cmd == "inspect") {
      if (args.size() != 1) throw UsageError{"inspect needs exactly one engine folder"};
      std::fputs(gligen_rt::inspect(args[0]).c_str(), stdout);
      return 0;
    }
    if (cmd == "backends") {
      std::printf("%s\n", gligen_rt_backends());
      return 0;
    }
    throw UsageError{"unknown command '" + cmd + "': use generate, inspect or backends"};
  } catch (const UsageError& e) {
    return fail(e.message + " (see gligen-rt-native --help)");
  } catch (const OutputError& e) {
    return fail(e.message);
  } catch (const gligen_rt::Error& e) {
    return fail(e.what(), e.status() == GLIGEN_RT_ERROR_INTERNAL ? 1 : 2);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
}
