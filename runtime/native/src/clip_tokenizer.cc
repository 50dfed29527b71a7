#include "clip_tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <queue>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "clip_text_tables.h"

namespace gligen {
namespace {

using u32 = std::u32string;
namespace ct = cliptext;

constexpr const char* kBos = "<|startoftext|>";
constexpr const char* kEos = "<|endoftext|>";
constexpr const char* kEndOfWord = "</w>";

// -- UTF-8 ---------------------------------------------------------------------------------------

u32 decode_utf8(const std::string& s) {
  u32 out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    char32_t cp;
    size_t len;
    char32_t min;
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      cp = b & 0x1F, len = 2, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      cp = b & 0x0F, len = 3, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      cp = b & 0x07, len = 4, min = 0x10000;
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) break;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (k < len || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      out.push_back(0xFFFD);
      i += std::max<size_t>(k, 1);
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(const u32& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// -- table look-ups ------------------------------------------------------------------------------

// Ranges are sorted and disjoint: the first range ending at or after c holds c when it starts at
// or before c.
bool in_ranges(const ct::Range* rs, size_t n, char32_t c) {
  const ct::Range* end = rs + n;
  const ct::Range* r =
      std::lower_bound(rs, end, c, [](const ct::Range& x, char32_t v) { return x.hi < v; });
  return r != end && r->lo <= c;
}

template <size_t N>
bool in_ranges(const ct::Range (&rs)[N], char32_t c) {
  return in_ranges(rs, N, c);
}

template <size_t N>
std::unordered_map<char32_t, u32> cp_str_map(const ct::CpStr (&table)[N]) {
  std::unordered_map<char32_t, u32> m;
  m.reserve(N);
  for (const auto& e : table) m.emplace(e.from, decode_utf8(e.to));
  return m;
}

template <size_t N>
std::unordered_map<char32_t, char32_t> cp_map(const ct::CpMap (&table)[N]) {
  std::unordered_map<char32_t, char32_t> m;
  m.reserve(N);
  for (const auto& e : table) m.emplace(e.from, e.to);
  return m;
}

template <size_t N>
std::unordered_map<std::string, u32> str_map(const ct::StrStr (&table)[N]) {
  std::unordered_map<std::string, u32> m;
  m.reserve(N);
  for (const auto& e : table) m.emplace(e.key, decode_utf8(e.value));
  return m;
}

struct Tables {
  std::unordered_map<char32_t, u32> py_lower = cp_str_map(ct::kPyLower);
  std::unordered_map<char32_t, char32_t> rust_lower_extra = cp_map(ct::kRustLowerExtra);
  std::unordered_map<char32_t, u32> decomposition = cp_str_map(ct::kDecomposition);
  std::unordered_map<uint64_t, char32_t> composition;
  std::unordered_map<char32_t, char32_t> c1 = cp_map(ct::kC1Windows1252);
  std::unordered_map<char32_t, u32> ligatures = cp_str_map(ct::kLigatures);
  std::unordered_map<char32_t, u32> width = cp_str_map(ct::kWidth);
  std::unordered_map<std::string, u32> ftfy_entities = str_map(ct::kFtfyEntities);
  std::unordered_map<std::string, u32> html5 = str_map(ct::kHtml5);
  std::unordered_map<char32_t, char32_t> invalid_charrefs = cp_map(ct::kInvalidCharrefs);

  Tables() {
    composition.reserve(std::size(ct::kComposition));
    for (const auto& c : ct::kComposition) {
      composition.emplace((static_cast<uint64_t>(c.first) << 32) | c.second, c.composite);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

bool py_space(char32_t c) { return in_ranges(ct::kPySpace, c); }
bool py_decimal(char32_t c) { return in_ranges(ct::kPyDecimal, c); }
bool onig_letter(char32_t c) { return in_ranges(ct::kOnigLetter, c); }
bool onig_number(char32_t c) { return in_ranges(ct::kOnigNumber, c); }
bool onig_space(char32_t c) { return in_ranges(ct::kOnigSpace, c); }
bool ascii_alnum(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool ascii_alpha(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// -- NFC (canonical decomposition, ordering, composition; Hangul algorithmically) ----------------

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

uint8_t ccc(char32_t c) {
  size_t lo = 0, hi = std::size(ct::kCcc);
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (ct::kCcc[mid].hi < c) {
      lo = mid + 1;
    } else if (ct::kCcc[mid].lo > c) {
      hi = mid;
    } else {
      return ct::kCcc[mid].ccc;
    }
  }
  return 0;
}

u32 nfc(const u32& s) {
  const Tables& t = tables();
  bool plain = true;  // fast path: nothing decomposable or combining
  for (char32_t c : s) {
    if (c >= 0x300) {
      plain = false;
      break;
    }
  }
  if (plain) {
    // below U+0300 only precomposed Latin-1/Latin Extended letters, which NFC keeps
    return s;
  }
  u32 d;
  d.reserve(s.size());
  for (char32_t c : s) {
    if (c >= kSBase && c < kSBase + kSCount) {
      const int si = static_cast<int>(c - kSBase);
      d.push_back(kLBase + si / kNCount);
      d.push_back(kVBase + (si % kNCount) / kTCount);
      if (si % kTCount) d.push_back(kTBase + si % kTCount);
      continue;
    }
    auto it = t.decomposition.find(c);
    if (it != t.decomposition.end()) {
      d += it->second;
    } else {
      d.push_back(c);
    }
  }
  // canonical ordering: stable sort of each run of non-starters by combining class
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // canonical composition
  u32 out;
  out.reserve(d.size());
  long starter = -1;
  int last_cc = -1;  // -1: nothing since the starter
  for (char32_t c : d) {
    const int cc = ccc(c);
    if (starter >= 0 && (last_cc == -1 || (last_cc != 0 && last_cc < cc))) {
      const char32_t s0 = out[starter];
      char32_t composite = 0;
      if (s0 >= kLBase && s0 < kLBase + kLCount && c >= kVBase && c < kVBase + kVCount) {
        composite = kSBase + ((s0 - kLBase) * kVCount + (c - kVBase)) * kTCount;
      } else if (s0 >= kSBase && s0 < kSBase + kSCount && (s0 - kSBase) % kTCount == 0 &&
                 c > kTBase && c < kTBase + kTCount) {
        composite = s0 + (c - kTBase);
      } else {
        auto it = t.composition.find((static_cast<uint64_t>(s0) << 32) | c);
        if (it != t.composition.end()) composite = it->second;
      }
      if (composite) {
        out[starter] = composite;
        continue;
      }
    }
    if (cc == 0) {
      starter = static_cast<long>(out.size());
      last_cc = -1;
    } else {
      last_cc = cc;
    }
    out.push_back(c);
  }
  return out;
}

// -- Python's str.lower() and str.strip(), re.sub(r"\s+", " ") -----------------------------------

u32 py_lower(const u32& s) {
  const Tables& t = tables();
  u32 out;
  out.reserve(s.size());
  const long n = static_cast<long>(s.size());
  for (long i = 0; i < n; ++i) {
    const char32_t c = s[i];
    if (c == 0x3A3) {  // final sigma (Python's handle_capital_sigma)
      long j = i - 1;
      while (j >= 0 && in_ranges(ct::kPyCaseIgnorable, s[j])) --j;
      bool final_sigma = j >= 0 && in_ranges(ct::kPyCasedNotIgnorable, s[j]);
      if (final_sigma && i + 1 < n) {
        j = i + 1;
        while (j < n && in_ranges(ct::kPyCaseIgnorable, s[j])) ++j;
        final_sigma = j == n || !in_ranges(ct::kPyCasedNotIgnorable, s[j]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
      continue;
    }
    auto it = t.py_lower.find(c);
    if (it != t.py_lower.end()) {
      out += it->second;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

u32 py_strip(const u32& s) {
  size_t a = 0, b = s.size();
  while (a < b && py_space(s[a])) ++a;
  while (b > a && py_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

u32 collapse_space(const u32& s, bool (*is_space)(char32_t)) {
  u32 out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (is_space(s[i])) {
      while (i < s.size() && is_space(s[i])) ++i;
      out.push_back(' ');
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

// -- html.unescape (Python's html module) --------------------------------------------------------

u32 replace_charref(const u32& body, bool* exact) {
  const Tables& t = tables();
  if (body[0] == '#') {
    const bool hex = body.size() > 1 && (body[1] == 'x' || body[1] == 'X');
    uint64_t num = 0;
    bool overflow = false;
    size_t digits = 0;
    for (size_t i = hex ? 2 : 1; i < body.size() && body[i] != ';'; ++i) {
      const char32_t c = body[i];
      const uint64_t digit =
          c <= '9' ? c - '0' : (c >= 'a' ? c - 'a' + 10 : c - 'A' + 10);
      num = num * (hex ? 16 : 10) + digit;
      if (num > 0x10FFFF) overflow = true, num = 0x110000;
      ++digits;
    }
    // Python's int() refuses decimal strings over 4300 digits (ValueError): not reproduced
    if (!hex && digits > 4300 && exact) *exact = false;
    if (!overflow) {
      auto it = t.invalid_charrefs.find(static_cast<char32_t>(num));
      if (it != t.invalid_charrefs.end()) return u32(1, it->second);
    }
    if (overflow || (num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
    if (in_ranges(ct::kInvalidCodepoints, static_cast<char32_t>(num))) return U"";
    return u32(1, static_cast<char32_t>(num));
  }
  const std::string name = encode_utf8(body);
  auto it = t.html5.find(name);
  if (it != t.html5.end()) return it->second;
  for (size_t x = body.size() - 1; x > 1; --x) {
    auto p = t.html5.find(encode_utf8(body.substr(0, x)));
    if (p != t.html5.end()) return p->second + body.substr(x);
  }
  return U"&" + body;
}

bool is_hex(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

u32 html_unescape(const u32& s, bool* exact = nullptr) {
  if (s.find(U'&') == u32::npos) return s;
  u32 out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    // &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
    size_t end = 0;  // end of the group (exclusive), 0 if no match
    const size_t j = i + 1;
    if (j < n && s[j] == '#') {
      size_t k = j + 1;
      while (k < n && s[k] >= '0' && s[k] <= '9') ++k;
      if (k > j + 1) {
        end = k < n && s[k] == ';' ? k + 1 : k;
      } else if (j + 1 < n && (s[j + 1] == 'x' || s[j + 1] == 'X')) {
        k = j + 2;
        while (k < n && is_hex(s[k])) ++k;
        if (k > j + 2) end = k < n && s[k] == ';' ? k + 1 : k;
      }
    } else {
      size_t k = j;
      while (k < n && k - j < 32) {
        const char32_t c = s[k];
        if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' ||
            c == ';') {
          break;
        }
        ++k;
      }
      if (k > j) end = k < n && s[k] == ';' ? k + 1 : k;
    }
    if (end == 0) {
      out.push_back('&');
      ++i;
      continue;
    }
    out += replace_charref(s.substr(j, end - j), exact);
    i = end;
  }
  return out;
}

// -- ftfy.fix_text with the default configuration ------------------------------------------------

// ftfy.fixes.unescape_html: HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24};
u32 ftfy_unescape_html(const u32& s) {
  const Tables& t = tables();
  u32 out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    size_t j = i + 1;
    const bool numeric = j < n && s[j] == '#';
    if (numeric) ++j;
    size_t k = j;
    while (k < n && ascii_alnum(s[k])) ++k;
    if (k == j || k - j > 24 || k >= n || s[k] != ';') {
      out.push_back(s[i++]);
      continue;
    }
    const u32 text = s.substr(i, k + 1 - i);
    auto it = t.ftfy_entities.find(encode_utf8(text.substr(1)));
    if (it != t.ftfy_entities.end()) {
      out += it->second;
    } else if (numeric) {
      const u32 unescaped = html_unescape(text);
      out += unescaped.find(U';') != u32::npos ? text : unescaped;
    } else {
      out += text;
    }
    i = k + 1;
  }
  return out;
}

// ftfy.badness.is_bad: BADNESS_RE.search(text) is not None
bool bad_item_matches(size_t set, char32_t c) {
  const ct::BadSet& bs = ct::kBadSets[set];
  return in_ranges(ct::kBadRanges + bs.offset, bs.count, c);
}

bool bad_alt_from(const ct::BadAlt& alt, size_t item, const u32& s, size_t pos) {
  if (item == alt.count) return true;
  const ct::BadItem& it = ct::kBadItems[alt.first + item];
  if (pos < s.size() && bad_item_matches(it.set, s[pos]) && bad_alt_from(alt, item + 1, s, pos + 1)) {
    return true;
  }
  return it.optional && bad_alt_from(alt, item + 1, s, pos);
}

bool is_bad(const u32& s) {
  for (size_t pos = 0; pos < s.size(); ++pos) {
    for (const auto& alt : ct::kBadAlts) {
      if (alt.at_begin && pos != 0) continue;
      if (bad_alt_from(alt, 0, s, pos)) return true;
    }
  }
  return false;
}

u32 translate(const u32& s, const std::unordered_map<char32_t, u32>& table) {
  u32 out;
  out.reserve(s.size());
  for (char32_t c : s) {
    auto it = table.find(c);
    if (it != table.end()) {
      out += it->second;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

u32 fix_c1_controls(const u32& s) {
  const Tables& t = tables();
  u32 out = s;
  for (char32_t& c : out) {
    if (c >= 0x80 && c <= 0x9F) c = t.c1.at(c);
  }
  return out;
}

u32 uncurl_quotes(const u32& s) {
  u32 out = s;
  for (char32_t& c : out) {
    if (in_ranges(ct::kDoubleQuotes, c)) {
      c = '"';
    } else if (in_ranges(ct::kSingleQuotes, c)) {
      c = '\'';
    }
  }
  return out;
}

u32 fix_line_breaks(const u32& s) {
  u32 out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == '\r') {
      out.push_back('\n');
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out.push_back('\n');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// ANSI_RE = "\033\[((?:\d|;)*)([a-zA-Z])" with Python's Unicode \d
u32 remove_terminal_escapes(const u32& s) {
  u32 out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s[i] == 0x1B && i + 1 < s.size() && s[i + 1] == '[') {
      size_t k = i + 2;
      while (k < s.size() && (s[k] == ';' || py_decimal(s[k]))) ++k;
      if (k < s.size() && ascii_alpha(s[k])) {
        i = k + 1;
        continue;
      }
    }
    out.push_back(s[i++]);
  }
  return out;
}

u32 remove_control_chars(const u32& s) {
  u32 out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (!in_ranges(ct::kControlChars, c)) out.push_back(c);
  }
  return out;
}

// -- ftfy.fix_encoding (default configuration): mojibake repair -----------------------------------

using Bytes = std::string;

struct Charmap {
  std::unordered_map<char32_t, unsigned char> encode;  // bytes >= 0x80 and 0x1A
};

const std::vector<Charmap>& charmaps() {
  static const std::vector<Charmap> maps = [] {
    std::vector<Charmap> m(ct::kCharmapCount);
    for (int e = 0; e < ct::kCharmapCount; ++e) {
      for (int b = 0x80; b < 0x100; ++b) m[e].encode.emplace(ct::kCharmapDecode[e][b], static_cast<unsigned char>(b));
      m[e].encode.emplace(ct::kCharmapDecode[e][0x1A], 0x1A);
    }
    return m;
  }();
  return maps;
}

// chardata.possible_encoding: ^[\x00-\x19\x1b-\x7f{chars of bytes 0x80-0xff and 0x1a}]*$
bool possible_encoding(const u32& text, int enc) {
  const Charmap& m = charmaps()[enc];
  for (char32_t c : text) {
    if ((c < 0x80 && c != 0x1A) || m.encode.count(c)) continue;
    return false;
  }
  return true;
}

Bytes encode_charmap(const u32& text, int enc) {
  const Charmap& m = charmaps()[enc];
  Bytes out;
  out.reserve(text.size());
  for (char32_t c : text) {
    out.push_back(static_cast<char>(c < 0x80 && c != 0x1A ? static_cast<unsigned char>(c) : m.encode.at(c)));
  }
  return out;
}

using BytePred = bool (*)(unsigned char);
bool b_cont(unsigned char b) { return b >= 0x80 && b <= 0xBF; }
bool b_space(unsigned char b) { return b == 0x20; }
bool b_low(unsigned char b) {  // [\x80-\x84\x86-\x9f\xa1-\xbf]
  return (b >= 0x80 && b <= 0x84) || (b >= 0x86 && b <= 0x9F) || (b >= 0xA1 && b <= 0xBF);
}
bool b_lead2_a0(unsigned char b) {
  return b == 0xC2 || b == 0xC3 || b == 0xC5 || b == 0xCE || b == 0xD0 || b == 0xD9;
}
bool b_e2e3(unsigned char b) { return b == 0xE2 || b == 0xE3; }
bool b_e0e3(unsigned char b) { return b >= 0xE0 && b <= 0xE3; }
bool b_f0(unsigned char b) { return b == 0xF0; }
bool b_c2df(unsigned char b) { return b >= 0xC2 && b <= 0xDF; }
bool b_c2c3(unsigned char b) { return b == 0xC2 || b == 0xC3; }
bool b_1a(unsigned char b) { return b == 0x1A; }
bool b_q(unsigned char b) { return b == '?'; }
bool b_1a_q(unsigned char b) { return b == 0x1A || b == '?'; }
bool b_1a_cont(unsigned char b) { return b == 0x1A || b_cont(b); }
bool b_1a_q_cont(unsigned char b) { return b == 0x1A || b == '?' || b_cont(b); }
bool b_ed(unsigned char b) { return b == 0xED; }
bool b_a0af(unsigned char b) { return b >= 0xA0 && b <= 0xAF; }
bool b_b0bf(unsigned char b) { return b >= 0xB0 && b <= 0xBF; }
bool b_e0ef(unsigned char b) { return b >= 0xE0 && b <= 0xEF; }
bool b_f0f4(unsigned char b) { return b >= 0xF0 && b <= 0xF4; }

using BytePattern = std::vector<BytePred>;

// Length of the first alternative (in order) matching at i, or 0 (Python's ordered alternation).
size_t match_alternatives(const std::vector<BytePattern>& alts, const Bytes& b, size_t i) {
  for (const BytePattern& p : alts) {
    if (i + p.size() > b.size()) continue;
    size_t k = 0;
    while (k < p.size() && p[k](static_cast<unsigned char>(b[i + k]))) ++k;
    if (k == p.size()) return k;
  }
  return 0;
}

const std::vector<BytePattern>& altered_utf8() {  // chardata.ALTERED_UTF8_RE
  static const std::vector<BytePattern> alts = {
      {b_lead2_a0, b_space},
      {b_e2e3, b_space, b_low},
      {b_e0e3, b_low, b_space},
      {b_f0, b_space, b_cont, b_cont},
      {b_f0, b_cont, b_space, b_cont},
      {b_f0, b_cont, b_cont, b_space},
  };
  return alts;
}

const std::vector<BytePattern>& lossy_utf8() {  // chardata.LOSSY_UTF8_RE
  static const std::vector<BytePattern> alts = {
      {b_c2df, b_1a},
      {b_c2c3, b_q},
      {b_ed, b_a0af, b_1a_q, b_ed, b_b0bf, b_1a_q_cont},
      {b_ed, b_a0af, b_1a_q_cont, b_ed, b_b0bf, b_1a_q},
      {b_e0ef, b_1a_q, b_1a_cont},
      {b_e0ef, b_1a_cont, b_1a_q},
      {b_f0f4, b_1a_q, b_1a_cont, b_1a_cont},
      {b_f0f4, b_1a_cont, b_1a_q, b_1a_cont},
      {b_f0f4, b_1a_cont, b_1a_cont, b_1a_q},
      {b_1a},
  };
  return alts;
}

bool search_alternatives(const std::vector<BytePattern>& alts, const Bytes& b) {
  for (size_t i = 0; i < b.size(); ++i) {
    if (match_alternatives(alts, b, i)) return true;
  }
  return false;
}

// fixes.restore_byte_a0
Bytes restore_byte_a0(const Bytes& in) {
  // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 "
  Bytes b;
  b.reserve(in.size() + 4);
  for (size_t i = 0; i < in.size(); ++i) {
    if (static_cast<unsigned char>(in[i]) == 0xC3 && i + 1 < in.size() && in[i + 1] == ' ') {
      const Bytes rest = in.substr(i + 2, 6);
      const bool excluded = rest.rfind(" ", 0) == 0 || rest.rfind("quele", 0) == 0 ||
                            rest.rfind("quela", 0) == 0 || rest.rfind("quilo", 0) == 0 ||
                            rest.rfind("s ", 0) == 0;
      if (!excluded) {
        b += "\xc3\xa0 ";
        ++i;
        continue;
      }
    }
    b.push_back(in[i]);
  }
  Bytes out;
  out.reserve(b.size());
  for (size_t i = 0; i < b.size();) {
    const size_t len = match_alternatives(altered_utf8(), b, i);
    if (len == 0) {
      out.push_back(b[i++]);
      continue;
    }
    for (size_t k = 0; k < len; ++k) out.push_back(b[i + k] == ' ' ? '\xa0' : b[i + k]);
    i += len;
  }
  return out;
}

// fixes.replace_lossy_sequences
Bytes replace_lossy_sequences(const Bytes& b) {
  Bytes out;
  out.reserve(b.size());
  for (size_t i = 0; i < b.size();) {
    const size_t len = match_alternatives(lossy_utf8(), b, i);
    if (len == 0) {
      out.push_back(b[i++]);
    } else {
      out += "\xef\xbf\xbd";
      i += len;
    }
  }
  return out;
}

// Python's strict UTF-8 decoder; with `variants`, ftfy's utf-8-variants (C0 80 -> U+0000 and
// CESU-8 surrogate pairs -> one character). False on any error.
bool decode_utf8_strict(const Bytes& s, bool variants, u32& out) {
  out.clear();
  const size_t n = s.size();
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  for (size_t i = 0; i < n;) {
    const unsigned char b0 = at(i);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    if (variants && b0 == 0xC0 && i + 1 < n && at(i + 1) == 0x80) {
      out.push_back(0);
      i += 2;
      continue;
    }
    if (variants && b0 == 0xED && i + 1 < n && at(i + 1) >= 0xA0) {
      // CESU8_RE at i (b"$" also matches before a final newline, hence the last case)
      const size_t rem = n - i;
      if (rem < 6) return false;
      const bool last_ok = b_cont(at(i + 5)) || (rem == 6 && at(i + 5) == '\n');
      if (b_a0af(at(i + 1)) && b_cont(at(i + 2)) && at(i + 3) == 0xED && b_b0bf(at(i + 4)) && last_ok) {
        out.push_back(((at(i + 1) & 0x0F) << 16) + ((at(i + 2) & 0x3F) << 10) + ((at(i + 4) & 0x0F) << 6) +
                      (at(i + 5) & 0x3F) + 0x10000);
        i += 6;
        continue;
      }
      return false;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    char32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, cp = b0 & 0x0F;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, cp = b0 & 0x07;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > n) return false;
    const unsigned char b1 = at(i + 1);
    if (b1 < lo || b1 > hi) return false;
    cp = (cp << 6) | (b1 & 0x3F);
    for (size_t k = 2; k < len; ++k) {
      if (!b_cont(at(i + k))) return false;
      cp = (cp << 6) | (at(i + k) & 0x3F);
    }
    out.push_back(cp);
    i += len;
  }
  return true;
}

bool is_ascii(const u32& s) {
  for (char32_t c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

u32 fix_encoding(const u32& text);

// fixes.decode_inconsistent_utf8: UTF8_DETECTOR_RE.sub(fix_embedded_mojibake, text)
size_t utf8_detector_match(const u32& t, size_t p) {
  if (p > 0 && in_ranges(ct::kUtf8ContinuationStrict, t[p - 1])) return 0;
  auto cont = [&](size_t k) { return k < t.size() && in_ranges(ct::kUtf8Continuation, t[k]); };
  size_t q = p;
  for (;;) {
    if (q < t.size() && in_ranges(ct::kUtf8FirstOf2, t[q]) && cont(q + 1)) {
      q += 2;
    } else if (q < t.size() && in_ranges(ct::kUtf8FirstOf3, t[q]) && cont(q + 1) && cont(q + 2)) {
      q += 3;
    } else if (q < t.size() && in_ranges(ct::kUtf8FirstOf4, t[q]) && cont(q + 1) && cont(q + 2) &&
               cont(q + 3)) {
      q += 4;
    } else {
      break;
    }
  }
  return q - p;
}

bool utf8_detector_search(const u32& t) {
  for (size_t p = 0; p < t.size(); ++p) {
    if (utf8_detector_match(t, p)) return true;
  }
  return false;
}

u32 decode_inconsistent_utf8(const u32& text) {
  u32 out;
  for (size_t p = 0; p < text.size();) {
    const size_t len = utf8_detector_match(text, p);
    if (len == 0) {
      out.push_back(text[p++]);
      continue;
    }
    const u32 sub = text.substr(p, len);
    out += sub.size() < text.size() && is_bad(sub) ? fix_encoding(sub) : sub;
    p += len;
  }
  return out;
}

// ftfy._fix_encoding_one_step_and_explain
u32 fix_encoding_one_step(const u32& text) {
  if (text.empty() || is_ascii(text) || !is_bad(text)) return text;
  bool latin1_possible = false;
  for (int enc = 0; enc < ct::kCharmapCount; ++enc) {
    if (!possible_encoding(text, enc)) continue;
    if (enc == ct::kCharmapLatin1) latin1_possible = true;
    Bytes encoded = encode_charmap(text, enc);
    if (enc != ct::kCharmapMacRoman && search_alternatives(altered_utf8(), encoded)) {
      encoded = restore_byte_a0(encoded);
    }
    if (ct::kCharmapSloppy[enc]) encoded = replace_lossy_sequences(encoded);
    const bool variants = encoded.find('\xed') != Bytes::npos || encoded.find('\xc0') != Bytes::npos;
    u32 fixed;
    if (decode_utf8_strict(encoded, variants, fixed)) return fixed;
  }
  if (utf8_detector_search(text)) {
    const u32 fixed = decode_inconsistent_utf8(text);
    if (fixed != text) return fixed;
  }
  if (latin1_possible) {
    // text.encode("latin-1").decode("windows-1252") (strict; the list never holds "windows-1252")
    u32 fixed;
    bool ok = true;
    for (char32_t c : text) {
      const uint32_t d = c < 0x100 ? ct::kWindows1252Strict[c] : 0xFFFFFFFFu;
      if (d == 0xFFFFFFFFu) {
        ok = false;
        break;
      }
      fixed.push_back(d);
    }
    if (ok && fixed != text) return fixed;
  }
  bool c1 = false;
  for (char32_t c : text) c1 = c1 || (c >= 0x80 && c <= 0x9F);
  if (c1) return fix_c1_controls(text);
  return text;
}

u32 fix_encoding(const u32& text) {
  u32 cur = text;
  for (;;) {
    u32 next = fix_encoding_one_step(cur);
    if (next == cur) return cur;
    cur = std::move(next);
  }
}

// ftfy.fix_and_explain(segment) without explanations
u32 ftfy_fix_segment(u32 text, bool unescape) {
  const Tables& t = tables();
  for (;;) {
    const u32 orig = text;
    if (unescape) text = ftfy_unescape_html(text);
    text = fix_encoding(text);
    text = fix_c1_controls(text);
    text = translate(text, t.ligatures);
    text = translate(text, t.width);
    text = uncurl_quotes(text);
    text = fix_line_breaks(text);
    text = remove_terminal_escapes(text);
    text = remove_control_chars(text);
    text = nfc(text);
    if (text == orig) return text;
  }
}

constexpr size_t kMaxDecodeLength = 1000000;

u32 ftfy_fix_text(const u32& text) {
  u32 out;
  bool unescape = true;  // unescape_html="auto": off from the first segment holding '<'
  size_t pos = 0;
  while (pos < text.size()) {
    size_t brk = text.find(U'\n', pos);
    brk = brk == u32::npos ? text.size() : brk + 1;
    if (brk - pos > kMaxDecodeLength) brk = pos + kMaxDecodeLength;
    const u32 segment = text.substr(pos, brk - pos);
    if (unescape && segment.find(U'<') != u32::npos) unescape = false;
    out += ftfy_fix_segment(segment, unescape);
    pos = brk;
  }
  return out;
}

u32 clean(const u32& text, bool& exact) {
  u32 s = ftfy_fix_text(text);
  s = py_strip(html_unescape(html_unescape(s, &exact), &exact));
  return py_lower(py_strip(collapse_space(s, py_space)));
}

// tokenizers' normalizer: NFC, Replace(\s+ -> " "), Lowercase (per character, in Rust)
u32 tokenizers_normalize(const u32& s) {
  const Tables& t = tables();
  u32 n = collapse_space(nfc(s), onig_space);
  u32 out;
  out.reserve(n.size());
  for (char32_t c : n) {
    auto extra = t.rust_lower_extra.find(c);
    if (extra != t.rust_lower_extra.end()) {
      out.push_back(extra->second);
      continue;
    }
    auto it = t.py_lower.find(c);
    if (c == 0x3A3) {
      out.push_back(0x3C3);  // per character: no final-sigma context in Rust's char lowercase
    } else if (it != t.py_lower.end()) {
      out += it->second;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// GPT-2/CLIP byte -> printable character map
const std::array<std::string, 256>& byte_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const char32_t cp = printable[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      append_utf8(t[b], cp);
    }
    return t;
  }();
  return table;
}

// CLIP's word split (tokenizers Split, matches kept):
// 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
void split_words(const u32& s, std::vector<u32>& words) {
  static const char32_t* const kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const char32_t c = s[i];
    if (c == '\'') {
      bool matched = false;
      for (const char32_t* con : kContractions) {
        const u32 cs(con);
        if (s.compare(i, cs.size(), cs) == 0) {
          words.push_back(cs);
          i += cs.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    if (onig_letter(c)) {
      size_t k = i;
      while (k < n && onig_letter(s[k])) ++k;
      words.push_back(s.substr(i, k - i));
      i = k;
    } else if (onig_number(c)) {
      words.push_back(s.substr(i, 1));
      ++i;
    } else if (onig_space(c)) {
      ++i;
    } else {
      size_t k = i;
      while (k < n && !onig_space(s[k]) && !onig_letter(s[k]) && !onig_number(s[k])) ++k;
      words.push_back(s.substr(i, k - i));
      i = k;
    }
  }
}

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

// -- ClipTokenizer -------------------------------------------------------------------------------

ClipTokenizer ClipTokenizer::from_folder(const std::string& folder) {
  const std::string vocab_path = folder + "/vocab.json";
  const std::string merges_path = folder + "/merges.txt";
  std::ifstream vf(vocab_path, std::ios::binary);
  std::ifstream mf(merges_path, std::ios::binary);
  if (!vf || !mf) {
    fail("no CLIP tokenizer in " + one_line(folder) +
         ": expected vocab.json + merges.txt (an engine folder's tokenizer/)");
  }
  std::unordered_map<std::string, int32_t> vocab;
  try {
    const nlohmann::json j = nlohmann::json::parse(vf);
    if (!j.is_object()) fail("not an object");
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number_integer()) fail("token " + it.key() + " has no integer id");
      vocab.emplace(it.key(), it.value().get<int32_t>());
    }
  } catch (const std::exception& e) {
    fail("cannot read " + one_line(vocab_path) + ": " + one_line(e.what()));
  }
  std::vector<std::pair<std::string, std::string>> merges;
  std::string line;
  size_t lineno = 0;
  while (std::getline(mf, line)) {
    ++lineno;
    if (line.rfind("#version", 0) == 0) continue;
    std::istringstream ls(line);
    std::vector<std::string> parts;
    std::string part;
    while (ls >> part) parts.push_back(part);
    if (parts.empty()) continue;
    if (parts.size() != 2) {
      fail("malformed " + one_line(merges_path) + " line " + std::to_string(lineno) +
           ": expected two tokens (a CLIP BPE merges file)");
    }
    merges.emplace_back(parts[0], parts[1]);
  }
  return ClipTokenizer(std::move(vocab), merges);
}

ClipTokenizer::ClipTokenizer(std::unordered_map<std::string, int32_t> vocab,
                             const std::vector<std::pair<std::string, std::string>>& merges)
    : vocab_(std::move(vocab)) {
  for (const char* special : {kBos, kEos}) {
    if (!vocab_.count(special)) {
      fail(std::string("CLIP vocabulary lacks ") + special + ": not a CLIP tokenizer");
    }
  }
  bos_id_ = vocab_.at(kBos);
  eos_id_ = vocab_.at(kEos);
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b), inew = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || inew == vocab_.end()) {
      fail("merge " + a + " " + b + " uses a token missing from the vocabulary: not a CLIP tokenizer");
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                         static_cast<uint32_t>(ib->second);
    merges_[key] = Merge{static_cast<uint32_t>(rank), inew->second};  // a repeated pair: last wins
  }
}

std::string ClipTokenizer::clean_text(const std::string& text, bool* exact) {
  bool ok = true;
  const std::string out = encode_utf8(clean(decode_utf8(text), ok));
  if (exact) *exact = ok;
  return out;
}

// tokenizers' BPE::merge_word + Word::merge_all: merges by lowest rank, then leftmost position
void ClipTokenizer::bpe_word(const std::string& byte_chars_utf8, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    long prev, next;
    bool alive;
  };
  const u32 chars = decode_utf8(byte_chars_utf8);
  std::vector<Symbol> sym;
  sym.reserve(chars.size());
  for (size_t i = 0; i < chars.size(); ++i) {
    std::string piece;
    append_utf8(piece, chars[i]);
    if (i + 1 == chars.size()) piece += kEndOfWord;
    auto it = vocab_.find(piece);
    const int32_t id = it != vocab_.end() ? it->second : eos_id_;  // unk = EOS
    sym.push_back(Symbol{id, static_cast<long>(i) - 1,
                         i + 1 < chars.size() ? static_cast<long>(i + 1) : -1, true});
  }
  struct Entry {
    uint32_t rank;
    size_t pos;
    int32_t new_id;
    bool operator<(const Entry& o) const {  // priority_queue pops the largest: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  auto find_merge = [&](int32_t a, int32_t b) -> const Merge* {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
                           static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Entry> queue;
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    if (const Merge* m = find_merge(sym[i].id, sym[i + 1].id)) queue.push(Entry{m->rank, i, m->new_id});
  }
  while (!queue.empty()) {
    const Entry top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next == -1) continue;
    const size_t next_pos = static_cast<size_t>(cur.next);
    const Symbol right = sym[next_pos];
    const Merge* m = find_merge(cur.id, right.id);
    if (!m || m->new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.next = right.next;
    sym[next_pos].alive = false;
    if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = static_cast<long>(top.pos);
    if (cur.prev >= 0) {
      if (const Merge* pm = find_merge(sym[static_cast<size_t>(cur.prev)].id, cur.id)) {
        queue.push(Entry{pm->rank, static_cast<size_t>(cur.prev), pm->new_id});
      }
    }
    if (cur.next >= 0) {
      if (const Merge* nm = find_merge(cur.id, sym[static_cast<size_t>(cur.next)].id)) {
        queue.push(Entry{nm->rank, top.pos, nm->new_id});
      }
    }
  }
  for (const Symbol& s : sym) {
    if (s.alive) out.push_back(s.id);
  }
}

std::vector<int32_t> ClipTokenizer::tokenize(const std::string& text, bool* exact) const {
  bool ok = true;
  const u32 normalized = tokenizers_normalize(clean(decode_utf8(text), ok));
  if (exact) *exact = ok;
  std::vector<int32_t> ids;
  const u32 bos = decode_utf8(kBos), eos = decode_utf8(kEos);
  const auto& bytes = byte_chars();
  std::vector<u32> words;
  size_t pos = 0;
  while (pos <= normalized.size()) {
    // the special tokens are split out first (tokenizers' added vocabulary)
    const size_t b = normalized.find(bos, pos), e = normalized.find(eos, pos);
    const size_t hit = std::min(b, e);
    const u32 chunk = normalized.substr(pos, hit == u32::npos ? u32::npos : hit - pos);
    words.clear();
    split_words(chunk, words);
    for (const u32& w : words) {
      std::string mapped;
      for (unsigned char byte : encode_utf8(w)) mapped += bytes[byte];
      bpe_word(mapped, ids);
    }
    if (hit == u32::npos) break;
    ids.push_back(hit == b ? bos_id_ : eos_id_);
    pos = hit + (hit == b ? bos.size() : eos.size());
  }
  return ids;
}

std::vector<int32_t> ClipTokenizer::encode(const std::string& text, size_t max_length,
                                           bool* exact) const {
  if (max_length < 2) fail("max_length must be >= 2, got " + std::to_string(max_length));
  const std::vector<int32_t> tokens = tokenize(text, exact);
  std::vector<int32_t> out(max_length, pad_id());
  out[0] = bos_id_;
  const size_t kept = std::min(tokens.size(), max_length - 2);
  std::copy(tokens.begin(), tokens.begin() + static_cast<long>(kept), out.begin() + 1);
  out[kept + 1] = eos_id_;
  return out;
}

size_t ClipTokenizer::eos_position(const std::string& text, size_t max_length) const {
  const std::vector<int32_t> ids = encode(text, max_length);
  return static_cast<size_t>(std::find(ids.begin(), ids.end(), eos_id_) - ids.begin());
}

}  // namespace gligen
