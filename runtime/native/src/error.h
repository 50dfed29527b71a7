// User-facing errors of the native runtime: one line saying what is wrong and how to fix it.
// The C API turns them into an error string and a non-zero status; the CLI prints them and exits 2.
#pragma once

#include <stdexcept>
#include <string>

namespace gligen {

enum class ErrorKind { Request, Engine, Backend, Numerical };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(one_line(message)), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

  static std::string one_line(std::string s) {
    for (char& c : s)
      if (c == '\n' || c == '\r') c = ' ';
    return s;
  }

 private:
  ErrorKind kind_;
};

inline Error RequestError(const std::string& m) { return Error(ErrorKind::Request, m); }
inline Error EngineError(const std::string& m) { return Error(ErrorKind::Engine, m); }
inline Error BackendUnavailable(const std::string& m) { return Error(ErrorKind::Backend, m); }
inline Error NumericalError(const std::string& m) { return Error(ErrorKind::Numerical, m); }

}  // namespace gligen
