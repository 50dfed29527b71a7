// Compares gligen::ClipTokenizer with the Python tokenizer's ids written by
// gen_tokenizer_reference.py. Usage: tokenizer_test REFERENCE_DIR
// Fails on any mismatch (ids, padded ids, EOS position), and when fewer than 10,000 prompts were
// compared; prompts the native side reports as not exact are counted separately.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "clip_tokenizer.h"

namespace {

bool read_u32(std::ifstream& in, uint32_t& v) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(&v), sizeof v));
}

bool read_ids(std::ifstream& in, std::vector<int32_t>& ids, uint32_t n) {
  ids.resize(n);
  return n == 0 || static_cast<bool>(in.read(reinterpret_cast<char*>(ids.data()), sizeof(int32_t) * n));
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < 24; ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s + (ids.size() > 24 ? " ..." : "");
}

std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    char buf[8];
    if (c < 0x20 || c == 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenizer_test: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return fail("usage: tokenizer_test REFERENCE_DIR");
  const std::string dir = argv[1];
  try {
    const gligen::ClipTokenizer tok = gligen::ClipTokenizer::from_folder(dir + "/tokenizer");
    std::ifstream in(dir + "/prompts.bin", std::ios::binary);
    char magic[5];
    uint32_t count = 0;
    if (!in.read(magic, 5) || std::memcmp(magic, "GTOK1", 5) != 0 || !read_u32(in, count)) {
      return fail("not a reference file: " + dir + "/prompts.bin");
    }
    size_t exact = 0, exact_mismatch = 0, inexact = 0, inexact_mismatch = 0, past_77 = 0;
    for (uint32_t p = 0; p < count; ++p) {
      uint32_t len = 0, n = 0;
      if (!read_u32(in, len)) return fail("truncated reference file");
      std::string text(len, '\0');
      std::vector<int32_t> want, want77;
      if ((len && !in.read(&text[0], len)) || !read_u32(in, n) || !read_ids(in, want, n) ||
          !read_ids(in, want77, gligen::ClipTokenizer::kMaxLength)) {
        return fail("truncated reference file");
      }
      bool is_exact = true;
      const std::vector<int32_t> got = tok.tokenize(text, &is_exact);
      const std::vector<int32_t> got77 = tok.encode(text);
      const size_t eos = tok.eos_position(text);
      // the pooled index: the first EOS of the padded ids (transformers' CLIP pooling)
      const size_t want_eos = static_cast<size_t>(
          std::find(want77.begin(), want77.end(), tok.eos_id()) - want77.begin());
      const bool same = got == want && got77 == want77 && eos == want_eos;
      past_77 += want.size() > gligen::ClipTokenizer::kMaxLength - 2;
      if (is_exact) {
        ++exact;
        if (!same) {
          if (++exact_mismatch <= 10) {
            std::fprintf(stderr, "MISMATCH prompt %u \"%s\"\n  python: %s\n  native: %s\n", p,
                         escaped(text).c_str(), show(want).c_str(), show(got).c_str());
          }
        }
      } else {
        ++inexact;
        if (!same) {
          ++inexact_mismatch;
          std::printf("reported not exact, differs: \"%s\"\n", escaped(text).c_str());
        }
      }
    }
    std::printf(
        "tokenizer: %u prompts (%zu past 77 tokens), %zu mismatches; reported exact: %zu prompts, "
        "%zu mismatches; reported not exact: %zu prompts, %zu differ\n",
        count, past_77, exact_mismatch + inexact_mismatch, exact, exact_mismatch, inexact,
        inexact_mismatch);
    return exact_mismatch + inexact_mismatch == 0 && count >= 10000 ? 0 : 1;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
