"""Write runtime/native/src/clip_text_tables.h: the Unicode and text-cleanup data of the native CLIP
tokenizer, taken from the very components the Python tokenizer (gligen_rt.core.tokenizer) runs:

- Python's ``unicodedata``/``str`` (ftfy's NFC, ``str.lower()`` with its final-sigma rule,
  ``str.isspace()`` for ``re``'s ``\\s``, ``\\w`` and ``\\d``), because ``clean_text`` runs in Python;
- ``tokenizers``' own regex engine (Oniguruma) for ``\\p{L}``, ``\\p{N}`` and ``\\s`` of CLIP's word
  split, and its Rust per-character lowercasing, because the split and the second lowercasing
  run there;
- ftfy's tables (ligatures, character width, control characters, HTML entities, C1 controls as
  sloppy windows-1252, the mojibake-detecting ``BADNESS_RE`` compiled into character-class
  sequences through Python's own regex parser) and ``html.unescape``'s entity tables.

Each stage in the Python pipeline has its own Unicode version (Python 3.11: 14.0; the regex
engine and Rust in ``tokenizers``: newer), so no single library (ICU included) reproduces them; the
tables do, for the installed versions. Regenerate after upgrading Python, ftfy or tokenizers:

    python runtime/native/tools/gen_clip_text_tables.py runtime/native/src/clip_text_tables.h
"""

from __future__ import annotations

import html
import html.entities
import os
import sys
import unicodedata
import warnings

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers sloppy-windows-1252)
import tokenizers
from ftfy import chardata
from ftfy.badness import BADNESS_RE
from tokenizers import Regex, normalizers, pre_tokenizers

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants as sc
    import sre_parse

MAX_CP = 0x110000
ALL = [c for c in range(MAX_CP) if not 0xD800 <= c <= 0xDFFF]


def ranges(cps) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in sorted(set(cps)):
        if out and out[-1][1] + 1 == c:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


def complement(rs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for a, b in rs:
        if a > nxt:
            out.append((nxt, a - 1))
        nxt = b + 1
    if nxt < MAX_CP:
        out.append((nxt, MAX_CP - 1))
    return out


def onig_set(pattern: str) -> set[int]:
    """Code points the tokenizers regex engine matches with ``pattern`` (one character)."""
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    text = "".join(chr(c) for c in ALL)
    found: set[int] = set()
    for i in range(0, len(text), 50000):
        for piece, _ in split.pre_tokenize_str(text[i : i + 50000]):
            found.update(ord(ch) for ch in piece)
    return found


# -- C++ emitters -----------------------------------------------------------------------------


def c_str(s: str) -> str:
    out = []
    for byte in s.encode("utf-8"):
        if 0x20 <= byte < 0x7F and chr(byte) not in '"\\?':
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def emit_ranges(name: str, rs: list[tuple[int, int]]) -> str:
    body = ",\n".join(
        "    " + ", ".join(f"{{0x{a:X}, 0x{b:X}}}" for a, b in rs[i : i + 6]) for i in range(0, len(rs), 6)
    )
    return f"inline constexpr Range {name}[] = {{\n{body}}};\n"


def emit_map1(name: str, pairs: list[tuple[int, int]]) -> str:
    body = ",\n".join(
        "    " + ", ".join(f"{{0x{a:X}, 0x{b:X}}}" for a, b in pairs[i : i + 6])
        for i in range(0, len(pairs), 6)
    )
    return f"inline constexpr CpMap {name}[] = {{\n{body}}};\n"


def emit_mapstr(name: str, pairs: list[tuple[int, str]]) -> str:
    body = ",\n".join(f"    {{0x{a:X}, {c_str(s)}}}" for a, s in pairs)
    return f"inline constexpr CpStr {name}[] = {{\n{body}}};\n"


def emit_strstr(name: str, pairs: list[tuple[str, str]]) -> str:
    body = ",\n".join(f"    {{{c_str(a)}, {c_str(b)}}}" for a, b in pairs)
    return f"inline constexpr StrStr {name}[] = {{\n{body}}};\n"


# -- tables -----------------------------------------------------------------------------------


def lower_tables() -> tuple[list[tuple[int, str]], list[tuple[int, int]], list[tuple[int, int]], list]:
    py_lower = []
    for c in ALL:
        low = chr(c).lower()
        if low != chr(c):
            py_lower.append((c, low))
    fixed = {c for c in ALL if chr(c).lower() == chr(c)}
    for _, low in py_lower:
        assert all(ord(ch) in fixed for ch in low), "Python lowercase output is not lowercase-stable"
    # final sigma context (Python's handle_capital_sigma): case-ignorable, and cased-not-ignorable
    ignorable, cased = [], []
    for c in ALL:
        p2 = (chr(c) + "\u03a3").lower()[-1] == "\u03c2"
        p1 = ("A" + chr(c) + "\u03a3").lower()[-1] == "\u03c2"
        if p2:
            cased.append(c)
        elif p1:
            ignorable.append(c)
    rust = normalizers.Lowercase()
    rust_lower = []
    for c in sorted(fixed):
        r = rust.normalize_str(chr(c))
        if r != chr(c):
            assert len(r) == 1, "multi-character Rust lowercase of a Python-lowercase character"
            rust_lower.append((c, ord(r)))
    return py_lower, ranges(ignorable), ranges(cased), rust_lower


def nfc_tables():
    ccc = []
    for c in ALL:
        k = unicodedata.combining(chr(c))
        if k:
            ccc.append((c, k))
    ccc_ranges: list[list[int]] = []
    for c, k in ccc:
        if ccc_ranges and ccc_ranges[-1][1] + 1 == c and ccc_ranges[-1][2] == k:
            ccc_ranges[-1][1] = c
        else:
            ccc_ranges.append([c, c, k])
    decomp = []
    comp = []
    for c in ALL:
        if 0xAC00 <= c <= 0xD7A3:
            continue  # Hangul syllables: algorithmic
        d = unicodedata.normalize("NFD", chr(c))
        if d != chr(c):
            decomp.append((c, d))
        raw = unicodedata.decomposition(chr(c))
        if raw and not raw.startswith("<"):
            parts = [int(p, 16) for p in raw.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(c):
                comp.append((parts[0], parts[1], c))
    comp.sort()
    return ccc_ranges, decomp, comp


def badness_program():
    """BADNESS_RE as alternatives of character-class sequences (Python's own parse of it)."""
    parsed = sre_parse.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    space = {c for c in ALL if chr(c).isspace()}
    word = {c for c in ALL if chr(c).isalnum() or chr(c) == "_"}
    sets: list[list[tuple[int, int]]] = []
    set_index: dict[tuple, int] = {}

    def add_set(rs) -> int:
        key = tuple(rs)
        if key not in set_index:
            set_index[key] = len(sets)
            sets.append(list(rs))
        return set_index[key]

    def item_set(op, av) -> int:
        if op is sc.LITERAL:
            return add_set([(av, av)])
        if op is sc.ANY:
            return add_set(complement([(10, 10)]))
        if op is sc.IN:
            cps: set[int] = set()
            negate = False
            for o, a in av:
                if o is sc.NEGATE:
                    negate = True
                elif o is sc.LITERAL:
                    cps.add(a)
                elif o is sc.RANGE:
                    cps.update(range(a[0], a[1] + 1))
                elif o is sc.CATEGORY and a is sc.CATEGORY_SPACE:
                    cps |= space
                elif o is sc.CATEGORY and a is sc.CATEGORY_WORD:
                    cps |= word
                else:
                    raise ValueError(f"unsupported class item {o} {a}")
            rs = ranges(cps)
            return add_set(complement(rs) if negate else rs)
        raise ValueError(f"unsupported item {op}")

    def sequence(items) -> tuple[bool, list[tuple[int, bool]]]:
        at_begin, seq = False, []
        for op, av in items:
            if op is sc.AT and av is sc.AT_BEGINNING:
                assert not seq
                at_begin = True
            elif op is sc.MAX_REPEAT:
                lo, hi, sub = av
                assert (lo, hi) == (0, 1) and len(sub) == 1
                seq.append((item_set(*sub[0]), True))
            else:
                seq.append((item_set(op, av), False))
        return at_begin, seq

    # a shared prefix may have been factored out of the branch: expand it back
    prefix, branch = [], None
    for op, av in parsed:
        if op is sc.BRANCH:
            assert branch is None
            branch = av[1]
        else:
            assert branch is None, "items after the branch"
            prefix.append((op, av))
    alts = [sequence(prefix + list(sub)) for sub in branch]
    return sets, alts


def html_tables():
    html5 = sorted(html.entities.html5.items())
    ftfy_entities = sorted((k[1:], v) for k, v in chardata.HTML_ENTITIES.items())  # drop "&"
    invalid_charrefs = sorted(html._invalid_charrefs.items())  # type: ignore[attr-defined]
    invalid_codepoints = sorted(html._invalid_codepoints)  # type: ignore[attr-defined]
    return html5, ftfy_entities, invalid_charrefs, invalid_codepoints


def charclass(body: str) -> list[tuple[int, int]]:
    """Code points of the regex character class ``[body]`` as Python parses it."""
    cps: set[int] = set()
    ((op, items),) = sre_parse.parse(f"[{body}]")
    assert op is sc.IN
    for o, a in items:
        if o is sc.LITERAL:
            cps.add(a)
        elif o is sc.RANGE:
            cps.update(range(a[0], a[1] + 1))
        else:
            raise ValueError(f"unsupported class item {o}")
    return ranges(cps)


UTF8_DETECTOR_TEMPLATE = """
    (?<! [{utf8_continuation_strict}])
    (
        [{utf8_first_of_2}] [{utf8_continuation}]
        |
        [{utf8_first_of_3}] [{utf8_continuation}]{{2}}
        |
        [{utf8_first_of_4}] [{utf8_continuation}]{{3}}
    )+
    """


def encoding_tables():
    """ftfy's single-byte encodings (fix_encoding tries them in this order) and strict windows-1252."""
    decode = []
    for enc in chardata.CHARMAP_ENCODINGS:
        table = bytes(range(256)).decode(enc)
        for b in range(256):
            if b < 0x80 and b != 0x1A:
                assert table[b] == chr(b), f"{enc} is not ASCII-compatible"
            else:
                assert table[b].encode(enc) == bytes([b]), f"{enc} does not round-trip byte {b:#x}"
        decode.append([ord(c) for c in table])
    strict = []
    for b in range(256):
        try:
            strict.append(ord(bytes([b]).decode("windows-1252")))
        except UnicodeDecodeError:
            strict.append(0xFFFFFFFF)
    assert chardata.UTF8_DETECTOR_RE.pattern == UTF8_DETECTOR_TEMPLATE.format(**chardata.UTF8_CLUES)
    clues = {k: charclass(v) for k, v in chardata.UTF8_CLUES.items()}
    return decode, strict, clues


def header() -> str:
    letters, numbers, onig_space = onig_set(r"\p{L}"), onig_set(r"\p{N}"), onig_set(r"\s")
    py_lower, ignorable, cased, rust_lower = lower_tables()
    ccc, decomp, comp = nfc_tables()
    bad_sets, bad_alts = badness_program()
    html5, ftfy_entities, invalid_charrefs, invalid_codepoints = html_tables()
    charmaps, windows_1252, clues = encoding_tables()
    py_space = ranges(c for c in ALL if chr(c).isspace())
    py_decimal = ranges(c for c in ALL if chr(c).isdecimal())
    c1 = [(b, ord(bytes([b]).decode("sloppy-windows-1252"))) for b in range(0x80, 0xA0)]
    ligatures = sorted(chardata.LIGATURES.items())
    width = sorted(chardata.WIDTH_MAP.items())
    control = ranges(chardata.CONTROL_CHARS)
    single_quotes = ranges(c for c in ALL if chardata.SINGLE_QUOTE_RE.fullmatch(chr(c)))
    double_quotes = ranges(c for c in ALL if chardata.DOUBLE_QUOTE_RE.fullmatch(chr(c)))
    assert chardata.HTML_ENTITY_RE.pattern == "&#?[0-9A-Za-z]{1,24};"
    assert chardata.C1_CONTROL_RE.pattern == r"[\x80-\x9f]"

    parts = [
        "// Generated by runtime/native/tools/gen_clip_text_tables.py; do not edit.\n",
        f"// Python {sys.version.split()[0]} (unicodedata {unicodedata.unidata_version}), "
        f"ftfy {ftfy.__version__}, tokenizers {tokenizers.__version__}.\n",
        "#pragma once\n#include <cstdint>\n\nnamespace gligen::cliptext {\n\n",
        "struct Range { uint32_t lo, hi; };\n",
        "struct CpMap { uint32_t from, to; };\n",
        "struct CpStr { uint32_t from; const char* to; };\n",
        "struct StrStr { const char* key; const char* value; };\n",
        "struct CccRange { uint32_t lo, hi; uint8_t ccc; };\n",
        "struct Composition { uint32_t first, second, composite; };\n",
        "struct BadSet { uint32_t offset, count; };\n",
        "struct BadItem { uint16_t set; bool optional; };\n",
        "struct BadAlt { uint16_t first, count; bool at_begin; };\n\n",
        "// tokenizers' regex engine: \\p{L}, \\p{N}, \\s\n",
        emit_ranges("kOnigLetter", ranges(letters)),
        emit_ranges("kOnigNumber", ranges(numbers)),
        emit_ranges("kOnigSpace", ranges(onig_space)),
        "// Python: str.isspace (re's \\s), str.isdecimal (re's \\d)\n",
        emit_ranges("kPySpace", py_space),
        emit_ranges("kPyDecimal", py_decimal),
        "// Python str.lower(): full mappings (U+03A3 gets the final-sigma rule in code)\n",
        emit_mapstr("kPyLower", py_lower),
        emit_ranges("kPyCaseIgnorable", ignorable),
        emit_ranges("kPyCasedNotIgnorable", cased),
        "// tokenizers' Lowercase on text Python already lowercased\n",
        emit_map1("kRustLowerExtra", rust_lower),
        "// NFC (Python unicodedata): combining classes, full canonical decompositions, compositions\n",
        "inline constexpr CccRange kCcc[] = {\n"
        + ",\n".join(f"    {{0x{a:X}, 0x{b:X}, {k}}}" for a, b, k in ccc)
        + "};\n",
        emit_mapstr("kDecomposition", decomp),
        "inline constexpr Composition kComposition[] = {\n"
        + ",\n".join(f"    {{0x{a:X}, 0x{b:X}, 0x{c:X}}}" for a, b, c in comp)
        + "};\n",
        "// ftfy\n",
        emit_map1("kC1Windows1252", c1),
        emit_mapstr("kLigatures", ligatures),
        emit_mapstr("kWidth", width),
        emit_ranges("kControlChars", control),
        emit_ranges("kSingleQuotes", single_quotes),
        emit_ranges("kDoubleQuotes", double_quotes),
        emit_strstr("kFtfyEntities", ftfy_entities),
        "// ftfy's BADNESS_RE: alternatives of character-class sequences\n",
    ]
    flat: list[tuple[int, int]] = []
    offsets = []
    for rs in bad_sets:
        offsets.append((len(flat), len(rs)))
        flat.extend(rs)
    parts.append(emit_ranges("kBadRanges", flat))
    parts.append(
        "inline constexpr BadSet kBadSets[] = {\n"
        + ",\n".join(f"    {{{o}, {n}}}" for o, n in offsets)
        + "};\n"
    )
    items, alts = [], []
    for at_begin, seq in bad_alts:
        alts.append((len(items), len(seq), at_begin))
        items.extend(seq)
    parts.append(
        "inline constexpr BadItem kBadItems[] = {\n"
        + ",\n".join(f"    {{{s}, {'true' if o else 'false'}}}" for s, o in items)
        + "};\n"
    )
    parts.append(
        "inline constexpr BadAlt kBadAlts[] = {\n"
        + ",\n".join(f"    {{{f}, {n}, {'true' if b else 'false'}}}" for f, n, b in alts)
        + "};\n"
    )
    parts.append(
        "// ftfy.fix_encoding: " + ", ".join(chardata.CHARMAP_ENCODINGS) + " (in this order)\n"
        f"inline constexpr int kCharmapCount = {len(charmaps)};\n"
        f"inline constexpr int kCharmapMacRoman = {chardata.CHARMAP_ENCODINGS.index('macroman')};\n"
        f"inline constexpr int kCharmapLatin1 = {chardata.CHARMAP_ENCODINGS.index('latin-1')};\n"
        "inline constexpr bool kCharmapSloppy[] = {"
        + ", ".join("true" if e.startswith("sloppy") else "false" for e in chardata.CHARMAP_ENCODINGS)
        + "};\n"
        "inline constexpr uint32_t kCharmapDecode[][256] = {\n"
        + ",\n".join("    {" + ", ".join(f"0x{c:X}" for c in table) + "}" for table in charmaps)
        + "};\n"
        "inline constexpr uint32_t kWindows1252Strict[256] = {"
        + ", ".join(f"0x{c:X}" for c in windows_1252)
        + "};\n"
    )
    for name, key in (
        ("kUtf8FirstOf2", "utf8_first_of_2"),
        ("kUtf8FirstOf3", "utf8_first_of_3"),
        ("kUtf8FirstOf4", "utf8_first_of_4"),
        ("kUtf8Continuation", "utf8_continuation"),
        ("kUtf8ContinuationStrict", "utf8_continuation_strict"),
    ):
        parts.append(emit_ranges(name, clues[key]))
    parts += [
        "// html.unescape\n",
        emit_strstr("kHtml5", html5),
        emit_map1("kInvalidCharrefs", [(a, ord(b) if b else 0) for a, b in invalid_charrefs]),
        emit_ranges("kInvalidCodepoints", ranges(invalid_codepoints)),
        "\n}  // namespace gligen::cliptext\n",
    ]
    for _, b in invalid_charrefs:
        assert len(b) == 1, "html invalid charref maps to more than one character"
    return "".join(parts)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gen_clip_text_tables.py OUT.h", file=sys.stderr)
        return 2
    out = argv[1]
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(header())
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
