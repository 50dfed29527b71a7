#include "schedulers.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "error.h"

namespace gligen {

namespace {
constexpr int kT = 1000;

// numpy.linspace(start, stop, num) in float64: i * step + start, the last value set to stop.
std::vector<double> linspace(double start, double stop, int num) {
  std::vector<double> y(num);
  if (num == 1) return {start};
  const double step = (stop - start) / (num - 1);
  for (int i = 0; i < num; ++i) y[i] = static_cast<double>(i) * step + start;
  y[num - 1] = stop;
  return y;
}

const std::vector<double>& sigmas_table() {
  static const std::vector<double> s = [] {
    std::vector<double> out(kT);
    const auto& a = alphas_cumprod();
    for (int t = 0; t < kT; ++t) out[t] = std::sqrt((1.0 - a[t]) / a[t]);
    return out;
  }();
  return s;
}

// numpy.interp(x, arange(1000), sigmas)
double interp_sigma(double x) {
  const auto& fp = sigmas_table();
  if (x <= 0.0) return fp[0];
  if (x >= kT - 1) return fp[kT - 1];
  const int j = static_cast<int>(std::floor(x));
  if (x == static_cast<double>(j)) return fp[j];
  const double slope = (fp[j + 1] - fp[j]) / (static_cast<double>(j + 1) - static_cast<double>(j));
  return slope * (x - static_cast<double>(j)) + fp[j];
}

template <class F>
Tensor map2(const Tensor& a, const Tensor& b, F f) {
  Tensor out(a.shape);
  for (size_t i = 0; i < out.data.size(); ++i) out.data[i] = f(a.data[i], b.data[i]);
  return out;
}
template <class F>
Tensor map1(const Tensor& a, F f) {
  Tensor out(a.shape);
  for (size_t i = 0; i < out.data.size(); ++i) out.data[i] = f(a.data[i]);
  return out;
}
inline float f32(double v) { return static_cast<float>(v); }

class DDIMLike : public Scheduler {
 public:
  explicit DDIMLike(int steps) {
    const int c = kT / steps;
    const auto& ac = alphas_cumprod();
    for (int k = steps - 1; k >= 0; --k) {
      const int t = c * k + 1;
      timesteps_.push_back(t);
      a_.push_back(ac[t]);
      a_prev_.push_back(k == 0 ? ac[0] : ac[c * (k - 1) + 1]);
    }
  }

 protected:
  Tensor update(const Tensor& x, const Tensor& e, int i) const {
    const float s1 = f32(std::sqrt(1.0 - a_[i])), s2 = f32(std::sqrt(a_[i]));
    const float s3 = f32(std::sqrt(a_prev_[i])), s4 = f32(std::sqrt(1.0 - a_prev_[i]));
    return map2(x, e, [=](float xv, float ev) {
      const float x0 = (xv - ev * s1) / s2;
      return x0 * s3 + ev * s4;
    });
  }
  std::vector<double> a_, a_prev_;
};

class DDIM : public DDIMLike {
 public:
  using DDIMLike::DDIMLike;
  Tensor step(const Tensor& x, int i, const EpsFn& eps_fn) override {
    return update(x, eps_fn(x, timesteps_[i]), i);
  }
};

class PLMS : public DDIMLike {
 public:
  using DDIMLike::DDIMLike;
  Tensor step(const Tensor& x, int i, const EpsFn& eps_fn) override {
    const double t = timesteps_[i];
    Tensor e_t = eps_fn(x, t);
    Tensor e_prime;
    const size_t n = old_.size();
    if (n == 0) {
      const double t_next = timesteps_[std::min<size_t>(i + 1, timesteps_.size() - 1)];
      Tensor e_next = eps_fn(update(x, e_t, i), t_next);
      e_prime = map2(e_t, e_next, [](float a, float b) { return (a + b) / 2.0f; });
    } else if (n == 1) {
      e_prime = map2(e_t, old_[0], [](float a, float o1) { return (a * 3.0f - o1) / 2.0f; });
    } else if (n == 2) {
      const Tensor &o1 = old_[1], &o2 = old_[0];
      e_prime = Tensor(e_t.shape);
      for (size_t k = 0; k < e_t.data.size(); ++k)
        e_prime.data[k] = (e_t.data[k] * 23.0f - o1.data[k] * 16.0f + o2.data[k] * 5.0f) / 12.0f;
    } else {
      const Tensor &o1 = old_[2], &o2 = old_[1], &o3 = old_[0];
      e_prime = Tensor(e_t.shape);
      for (size_t k = 0; k < e_t.data.size(); ++k)
        e_prime.data[k] =
            (e_t.data[k] * 55.0f - o1.data[k] * 59.0f + o2.data[k] * 37.0f - o3.data[k] * 9.0f) / 24.0f;
    }
    Tensor out = update(x, e_prime, i);
    old_.push_back(std::move(e_t));
    if (old_.size() > 3) old_.pop_front();
    return out;
  }

 private:
  std::deque<Tensor> old_;  // raw e_t of the last (up to) 3 steps, oldest first
};

class DPMSolverPP2M : public Scheduler {
 public:
  explicit DPMSolverPP2M(int steps) {
    auto ts = linspace(0, kT - 1, steps + 1);
    for (int k = steps; k >= 1; --k) timesteps_.push_back(std::nearbyint(ts[k]));
    for (double t : timesteps_) sigmas_.push_back(sigmas_table()[static_cast<int>(t)]);
    sigmas_.push_back(0.0);
  }
  Tensor step(const Tensor& x, int i, const EpsFn& eps_fn) override {
    const double sigma = sigmas_[i], alpha = 1.0 / std::sqrt(sigma * sigma + 1.0), s = sigma * alpha;
    Tensor e = eps_fn(x, timesteps_[i]);
    const float fs = f32(s), fa = f32(alpha);
    Tensor x0 = map2(x, e, [=](float xv, float ev) { return (xv - ev * fs) / fa; });
    Tensor x0_prev = std::move(x0_prev_);
    const bool first = !has_prev_;
    x0_prev_ = x0;
    has_prev_ = true;
    const double sigma_next = sigmas_[i + 1];
    if (sigma_next == 0.0) return x0;
    const double alpha_next = 1.0 / std::sqrt(sigma_next * sigma_next + 1.0), s_next = sigma_next * alpha_next;
    const double h = std::log(sigma) - std::log(sigma_next);
    Tensor d;
    if (first) {
      d = x0;
    } else {
      const double h_prev = std::log(sigmas_[i - 1]) - std::log(sigma);
      const float r = f32(0.5 * h / h_prev);
      d = map2(x0, x0_prev, [=](float a, float b) { return a + (a - b) * r; });
    }
    const float c1 = f32(s_next / s), c2 = f32(alpha_next * std::expm1(-h));
    return map2(x, d, [=](float xv, float dv) { return xv * c1 - dv * c2; });
  }
  Tensor add_noise(const Tensor& x0, const Tensor& noise, int i) const override {
    const double sigma = sigmas_[i], alpha = 1.0 / std::sqrt(sigma * sigma + 1.0);
    const float fa = f32(alpha), fsa = f32(sigma * alpha);
    return map2(x0, noise, [=](float a, float b) { return a * fa + b * fsa; });
  }

 private:
  std::vector<double> sigmas_;
  Tensor x0_prev_;
  bool has_prev_ = false;
};

class Euler : public Scheduler {
 public:
  explicit Euler(int steps) {
    auto ts = linspace(0, kT - 1, steps);  // diffusers builds them in float32
    for (int k = steps - 1; k >= 0; --k) timesteps_.push_back(static_cast<double>(static_cast<float>(ts[k])));
    for (double t : timesteps_) sigmas_.push_back(interp_sigma(t));
    init_noise_sigma_ = *std::max_element(sigmas_.begin(), sigmas_.end());
    sigmas_.push_back(0.0);
  }
  Tensor step(const Tensor& x, int i, const EpsFn& eps_fn) override {
    const double sigma = sigmas_[i];
    const float scale = f32(std::sqrt(sigma * sigma + 1.0));
    Tensor e = eps_fn(map1(x, [=](float v) { return v / scale; }), timesteps_[i]);
    const float ds = f32(sigmas_[i + 1] - sigma);
    return map2(x, e, [=](float xv, float ev) { return xv + ev * ds; });
  }
  Tensor add_noise(const Tensor& x0, const Tensor& noise, int i) const override {
    const float s = f32(sigmas_[i]);
    return map2(x0, noise, [=](float a, float b) { return a + b * s; });
  }

 private:
  std::vector<double> sigmas_;
};
}  // namespace

const std::vector<double>& alphas_cumprod() {
  static const std::vector<double> a = [] {
    auto betas = linspace(std::pow(0.00085, 0.5), std::pow(0.012, 0.5), kT);
    std::vector<double> out(kT);
    double prod = 1.0;
    for (int t = 0; t < kT; ++t) {
      const double b = betas[t] * betas[t];
      prod = t == 0 ? (1.0 - b) : prod * (1.0 - b);
      out[t] = prod;
    }
    return out;
  }();
  return a;
}

Tensor Scheduler::add_noise(const Tensor& x0, const Tensor& noise, int i) const {
  const double a = alphas_cumprod()[static_cast<int>(timesteps_[i])];
  const float s1 = f32(std::sqrt(a)), s2 = f32(std::sqrt(1.0 - a));
  return map2(x0, noise, [=](float u, float v) { return u * s1 + v * s2; });
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, int steps) {
  if (steps < 1 || steps > kT) throw RequestError("steps " + std::to_string(steps) + " must be an integer in [1, 1000]");
  if (name == "plms") return std::make_unique<PLMS>(steps);
  if (name == "ddim") return std::make_unique<DDIM>(steps);
  if (name == "dpmpp_2m") return std::make_unique<DPMSolverPP2M>(steps);
  if (name == "euler") return std::make_unique<Euler>(steps);
  throw RequestError("unknown sampler '" + name + "': choose one of plms, ddim, dpmpp_2m, euler");
}

}  // namespace gligen
