// Compares gligen::NormalStream with numpy's draws written by gen_noise_reference.py, bit for bit.
// Usage: noise_test REFERENCE.bin
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "noise.h"

namespace {

template <typename T>
bool read(std::ifstream& in, T& v) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(&v), sizeof(T)));
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "noise_test: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return fail("usage: noise_test REFERENCE.bin");
  std::ifstream in(argv[1], std::ios::binary);
  char magic[5];
  uint32_t cases = 0;
  if (!in.read(magic, 5) || std::memcmp(magic, "GNRM1", 5) != 0 || !read(in, cases)) {
    return fail(std::string("not a reference file: ") + argv[1]);
  }
  uint64_t total_draws = 0, mismatches = 0;
  for (uint32_t c = 0; c < cases; ++c) {
    uint64_t seed, shi, slo, ihi, ilo;
    uint32_t n_chunks;
    if (!read(in, seed) || !read(in, shi) || !read(in, slo) || !read(in, ihi) || !read(in, ilo) ||
        !read(in, n_chunks)) {
      return fail("truncated reference file");
    }
    std::vector<uint32_t> sizes(n_chunks);
    for (auto& s : sizes) {
      if (!read(in, s)) return fail("truncated reference file");
    }
    gligen::NormalStream stream(seed);
    const unsigned __int128 state = stream.generator().state();
    const unsigned __int128 inc = stream.generator().inc();
    if (static_cast<uint64_t>(state >> 64) != shi || static_cast<uint64_t>(state) != slo ||
        static_cast<uint64_t>(inc >> 64) != ihi || static_cast<uint64_t>(inc) != ilo) {
      return fail("seed " + std::to_string(seed) + ": PCG64 state after seeding differs from numpy's");
    }
    uint64_t seed_mismatches = 0, seed_draws = 0;
    for (uint32_t n : sizes) {
      std::vector<float> expected(n);
      if (!in.read(reinterpret_cast<char*>(expected.data()), sizeof(float) * n)) {
        return fail("truncated reference file");
      }
      const std::vector<float> got = stream.latents(n);
      for (uint32_t i = 0; i < n; ++i) {
        if (std::memcmp(&got[i], &expected[i], sizeof(float)) != 0) {
          if (seed_mismatches < 5) {
            std::fprintf(stderr, "seed %llu draw %llu: got %.9g expected %.9g\n",
                         static_cast<unsigned long long>(seed),
                         static_cast<unsigned long long>(seed_draws + i), got[i], expected[i]);
          }
          ++seed_mismatches;
        }
      }
      seed_draws += n;
    }
    std::printf("seed %llu: %llu draws, %llu mismatches\n", static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(seed_draws),
                static_cast<unsigned long long>(seed_mismatches));
    total_draws += seed_draws;
    mismatches += seed_mismatches;
  }
  std::printf("noise: %u seeds, %llu draws, %llu mismatches\n", cases,
              static_cast<unsigned long long>(total_draws),
              static_cast<unsigned long long>(mismatches));
  return mismatches == 0 && total_draws > 0 ? 0 : 1;
}
