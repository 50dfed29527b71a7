#include "noise.h"

#include <cmath>

#include "ziggurat_tables.h"

namespace gligen {
namespace {

// numpy.random.SeedSequence constants (bit_generator.pyx).
constexpr uint32_t kInitA = 0x43b0d7e5u;
constexpr uint32_t kMultA = 0x931e8875u;
constexpr uint32_t kInitB = 0x8b51f9ddu;
constexpr uint32_t kMultB = 0x58f38dedu;
constexpr uint32_t kMixMultL = 0xca01f9ddu;
constexpr uint32_t kMixMultR = 0x4973f715u;
constexpr int kXShift = 16;
constexpr size_t kPoolSize = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

// PCG64's default 128-bit multiplier.
constexpr unsigned __int128 kMultiplier =
    (static_cast<unsigned __int128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

}  // namespace

std::vector<uint32_t> seed_words(uint64_t seed) {
  std::vector<uint32_t> words;
  if (seed == 0) words.push_back(0);
  while (seed > 0) {
    words.push_back(static_cast<uint32_t>(seed & 0xffffffffu));
    seed >>= 32;
  }
  return words;
}

std::vector<uint32_t> seed_sequence_state(const std::vector<uint32_t>& entropy, size_t n_words) {
  // mix_entropy: hash the entropy into a pool of 4 words
  std::array<uint32_t, kPoolSize> pool{};
  uint32_t hash_const = kInitA;
  for (size_t i = 0; i < kPoolSize; ++i) {
    pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
  }
  for (size_t src = 0; src < kPoolSize; ++src) {
    for (size_t dst = 0; dst < kPoolSize; ++dst) {
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
    }
  }
  for (size_t src = kPoolSize; src < entropy.size(); ++src) {
    for (size_t dst = 0; dst < kPoolSize; ++dst) {
      pool[dst] = mix(pool[dst], hashmix(entropy[src], hash_const));
    }
  }
  // generate_state
  std::vector<uint32_t> state(n_words);
  uint32_t hc = kInitB;
  for (size_t i = 0; i < n_words; ++i) {
    uint32_t v = pool[i % kPoolSize];
    v ^= hc;
    hc *= kMultB;
    v *= hc;
    v ^= v >> kXShift;
    state[i] = v;
  }
  return state;
}

Pcg64::Pcg64(uint64_t seed) { seed_from_words(seed_words(seed)); }

Pcg64::Pcg64(const std::vector<uint32_t>& entropy) { seed_from_words(entropy); }

Pcg64::Pcg64(unsigned __int128 state, unsigned __int128 inc) : state_(state), inc_(inc) {}

void Pcg64::seed_from_words(const std::vector<uint32_t>& entropy) {
  // generate_state(4, uint64): little-endian pairs of uint32 words
  const std::vector<uint32_t> w = seed_sequence_state(entropy, 8);
  uint64_t v[4];
  for (int i = 0; i < 4; ++i) v[i] = (static_cast<uint64_t>(w[2 * i + 1]) << 32) | w[2 * i];
  const unsigned __int128 initstate = (static_cast<unsigned __int128>(v[0]) << 64) | v[1];
  const unsigned __int128 initseq = (static_cast<unsigned __int128>(v[2]) << 64) | v[3];
  // pcg_setseq_128_srandom_r
  state_ = 0;
  inc_ = (initseq << 1) | 1u;
  step();
  state_ += initstate;
  step();
  has_uint32_ = false;
  uinteger_ = 0;
}

void Pcg64::step() { state_ = state_ * kMultiplier + inc_; }

uint64_t Pcg64::next_u64() {
  step();
  // XSL-RR output
  const uint64_t hi = static_cast<uint64_t>(state_ >> 64);
  const uint64_t lo = static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(hi >> 58);
  const uint64_t xored = hi ^ lo;
  return (xored >> rot) | (xored << ((64u - rot) & 63u));
}

uint32_t Pcg64::next_u32() {
  if (has_uint32_) {
    has_uint32_ = false;
    return uinteger_;
  }
  const uint64_t next = next_u64();
  has_uint32_ = true;
  uinteger_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next & 0xffffffffu);
}

float Pcg64::next_float() { return static_cast<float>(next_u32() >> 8) * (1.0f / 16777216.0f); }

// numpy's random_standard_normal_f (distributions.c); the arithmetic, including the double
// exp() in the wedge test and log1pf() in the tail (numpy >= 1.x uses
// log1p(-u) there), follows it operation for operation (this file
// is compiled without floating-point contraction).
float NormalStream::next() {
  for (;;) {
    const uint32_t r = rng_.next_u32();
    const int idx = static_cast<int>(r & 0xff);
    const int sign = static_cast<int>((r >> 8) & 0x1);
    const uint32_t rabs = (r >> 9) & 0x0007fffff;
    float x = static_cast<float>(rabs) * zig::kWi[idx];
    if (sign & 0x1) x = -x;
    if (rabs < zig::kKi[idx]) return x;
    if (idx == 0) {
      for (;;) {
        const float xx = -zig::kNorInvRf * std::log1p(-rng_.next_float());
        const float yy = -std::log1p(-rng_.next_float());
        if (yy + yy > xx * xx) {
          return ((rabs >> 8) & 0x1) ? -(zig::kNorRf + xx) : zig::kNorRf + xx;
        }
      }
    } else {
      if (((zig::kFi[idx - 1] - zig::kFi[idx]) * rng_.next_float() + zig::kFi[idx]) <
          std::exp(-0.5 * x * x)) {
        return x;
      }
    }
  }
}

void NormalStream::fill(float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = next();
}

std::vector<float> NormalStream::latents(size_t n) {
  std::vector<float> out(n);
  fill(out.data(), n);
  return out;
}

}  // namespace gligen
