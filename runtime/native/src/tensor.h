// Host tensors: a shape and contiguous row-major float32 (or int32) data. Arithmetic on them lives
// in schedulers.cc / pipeline.cc and rounds exactly like numpy's float32 operations.
#pragma once

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace gligen {

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, [](int64_t a, int64_t b) { return a * b; });
}

inline std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

struct Tensor {
  Shape shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(Shape s, float fill = 0.0f) : shape(std::move(s)), data(static_cast<size_t>(numel(shape)), fill) {}
  Tensor(Shape s, std::vector<float> d) : shape(std::move(s)), data(std::move(d)) {}

  int64_t size() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(size_t i) const { return shape.at(i); }
  // Rows [begin, end) of the leading axis.
  Tensor rows(int64_t begin, int64_t end) const {
    int64_t row = shape.empty() || shape[0] == 0 ? 0 : size() / shape[0];
    Shape s = shape;
    s[0] = end - begin;
    return Tensor(s, std::vector<float>(data.begin() + begin * row, data.begin() + end * row));
  }
};

// Concatenate along axis 0.
inline Tensor concat0(const std::vector<const Tensor*>& parts) {
  Tensor out;
  out.shape = parts.at(0)->shape;
  out.shape[0] = 0;
  for (const Tensor* p : parts) {
    out.shape[0] += p->shape[0];
    out.data.insert(out.data.end(), p->data.begin(), p->data.end());
  }
  return out;
}

struct IntTensor {
  Shape shape;
  std::vector<int32_t> data;
};

}  // namespace gligen
