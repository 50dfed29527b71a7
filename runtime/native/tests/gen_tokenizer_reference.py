"""Write prompts and the Python tokenizer's ids for the native tokenizer test.

Usage: gen_tokenizer_reference.py OUT_DIR [COUNT]
       gen_tokenizer_reference.py --check TOKENIZER_TEST_BINARY [COUNT]
         (writes the reference to a temporary folder, runs the binary on it, returns its status;
         77 = skipped, when no CLIP vocabulary is installed)

OUT_DIR gets tokenizer/ (vocab.json + merges.txt written by gligen_rt.core.tokenizer.ClipTokenizer
.save) and prompts.bin (little-endian): b"GTOK1", u32 count; per prompt: u32 byte length, UTF-8
bytes, u32 n, n x i32 ids of ClipTokenizer.tokenize(prompt), 77 x i32 ids of encode([prompt])[0].

The prompts are generated from a fixed seed: plain prompts in mixed case, accents (precomposed and
combining), CJK, Hangul, emoji (ZWJ sequences, skin tones, flags), Greek final sigma, Cyrillic,
Arabic, Devanagari, Thai, HTML entities (named, numeric, malformed, double-escaped, upper-case),
curly quotes, ligatures, full-width text, whitespace runs (tabs, newlines, NBSP, ideographic
space), control characters and terminal escapes, contractions, the special tokens as text,
prompts past 77 tokens, random code points from every assigned Unicode block, and mojibake.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import tempfile
import unicodedata

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers the sloppy-windows-* codecs used for mojibake)
from ftfy.badness import is_bad

from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.tokenizer import MAX_LENGTH, ClipTokenizer

SKIP = 77

WORDS = (
    "a photo of an astronaut riding horse on mars cat dog sitting table red blue green car street "
    "city night sunset mountain lake forest portrait woman man child old young beautiful detailed "
    "highly intricate painting oil canvas digital art trending artstation 4k 8k hdr cinematic "
    "lighting octane render unreal engine sharp focus illustration by greg rutkowski alphonse mucha "
    "bokeh depth field wide angle lens studio ghibli anime style watercolor sketch pencil drawing "
    "the in with and of for at from into over under between grounded box phrase teddy bear apple "
    "banana pizza umbrella bicycle boat airplane train elephant giraffe zebra kitchen bedroom"
).split()

SNIPPETS = [
    "café",
    "naïve",
    "résumé",
    "Crème brûlée",
    "jalapeño",
    "Zürich",
    "São Paulo",
    "smörgåsbord",
    "e\u0301",
    "a\u0308o\u0308",
    "n\u0303",
    "\u0041\u030a",
    "i\u0307",
    "Å",
    "Ω",
    "ﬁ",
    "ﬂ",
    "Ĳ",
    "東京タワー",
    "猫",
    "中国的山水画",
    "한국어 텍스트",
    "ｶﾀｶﾅ",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "１２３",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🏳️\u200d🌈",
    "🇯🇵",
    "🇺🇸",
    "❤️",
    "✨",
    "🔥🔥🔥",
    "☕",
    "ΟΔΥΣΣΕΥΣ",
    "Σ",
    "ΑΣ ΣΑ",
    "Σ.",
    "ὈΔΥΣΣΕΎΣ",
    "Москва",
    "Привет, мир",
    "مرحبا",
    "שלום",
    "नमस्ते",
    "สวัสดี",
    "İstanbul",
    "ǅ",
    "ß",
    "ẞ",
    "ŉ",
    "Ǳ",
    "&amp;",
    "&lt;b&gt;",
    "&quot;hi&quot;",
    "&#39;",
    "&#x2019;",
    "&#8217;",
    "&nbsp;",
    "&eacute;",
    "&AMP;",
    "&EACUTE;",
    "&Eacute;",
    "&foo;",
    "&#12345678;",
    "&#0;",
    "&#x80;",
    "&#xD800;",
    "&amp;amp;",
    "&amp;lt;",
    "&ampfoo",
    "&notin;",
    "&notit;",
    "&copy",
    "&#65",
    "&#x41",
    "&",
    "&;",
    "&#;",
    "&#x;",
    "AT&T",
    "R&D",
    "&hellip;",
    "&mdash;",
    "&frac12;",
    "&#128512;",
    "‘quoted’",
    "“double”",
    "it’s",
    "ʼn",
    "‛odd‟",
    "«guillemets»",
    "—",
    "–",
    "…",
    "it's",
    "IT'S",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "''s",
    "!'s",
    "'t'",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|ENDOFTEXT|>",
    "<|endof",
    "<|",
    "|>",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "  ",
    "   \t  ",
    "\u00a0",
    "\u3000",
    "\u2003",
    "\u2028",
    "\u0085",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\x00",
    "\x07",
    "\x1b[31mred\x1b[0m",
    "\x1b[1;32m",
    "\x7f",
    "\u206a",
    "\ufff9",
    "\u00ad",
    "½",
    "²",
    "³",
    "⅓",
    "Ⅻ",
    "٣",
    "৪",
    "፲",
    "1,000",
    "3.14",
    "-5",
    "!!!",
    "???",
    "...",
    "(((",
    ")))",
    "[x]",
    "{y}",
    "#hashtag",
    "@user",
    "$100",
    "100%",
    "a,b;c:d",
    "~`^",
    "\\",
    "/",
    "|",
    "+=",
    "<=>",
    "ﬀ",
    "Ⓐ",
    "㎏",
    "™",
    "©",
    "®",
    "°C",
    "µ",
]

MOJIBAKE = [
    "cafÃ©",
    "Ã¼ber",
    "â€œquotedâ€\x9d",
    "donâ€™t",
    "\x80\x81",
    "Ã\xa0 la",
    "Â£5",
    "Ã la mode",
    "voilÃ le travail",
    "Ã\x80\x80",
    "Ã€",
    "Ã\x80",
    "âœ” No problems",
    "sÃ³",
    "ð\x9f\x98\x80",
    "Ã¢â‚¬â„¢",
    "РґРѕР±СЂРѕ",
    "Î±Î²Î³",
    "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    "Ã¤Ã¶Ã¼",
    "Ã\x83Â©",
    "CafÃ?",
    "Ã?",
]
# encodings whose misreading of UTF-8 produces the mojibake ftfy repairs
MOJIBAKE_ENCODINGS = [
    "latin-1",
    "windows-1252",
    "sloppy-windows-1252",
    "sloppy-windows-1251",
    "sloppy-windows-1250",
    "sloppy-windows-1253",
    "sloppy-windows-1254",
    "sloppy-windows-1257",
    "iso-8859-2",
    "macroman",
    "cp437",
]


def mojibake(rng: random.Random, text: str) -> str:
    """`text` as UTF-8 bytes misread in a single-byte encoding, sometimes damaged further."""
    data = text.encode("utf-8", "surrogatepass")
    out = data.decode(rng.choice(MOJIBAKE_ENCODINGS), errors="replace")
    r = rng.random()
    if r < 0.15:
        out = out.replace("\xa0", " ")  # a no-break space turned into a space
    elif r < 0.25:
        out = out.replace("\ufffd", "?")
    elif r < 0.35:  # twice misread
        out = out.encode("utf-8").decode(rng.choice(MOJIBAKE_ENCODINGS), errors="replace")
    elif r < 0.45:  # only part of the text misread
        cut = rng.randint(0, len(text))
        out = text[:cut] + mojibake(rng, text[cut:]) if text[cut:] else out
    return out


def cesu8(text: str) -> bytes:
    """CESU-8: characters outside the BMP as two UTF-8-encoded surrogates."""
    units = text.encode("utf-16-le")
    chars = [int.from_bytes(units[i : i + 2], "little") for i in range(0, len(units), 2)]
    return "".join(chr(c) for c in chars).encode("utf-8", "surrogatepass")


def assigned_codepoints() -> list[int]:
    return [
        c
        for c in range(0x20, 0x110000)
        if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")
    ]


def make_prompts(count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    cps = assigned_codepoints()
    prompts: list[str] = list(SNIPPETS) + list(MOJIBAKE) + ["", " ", "\n\n", "a" * 300]
    while len(prompts) < count:
        kind = rng.random()
        if kind < 0.35:  # prompt-like text with snippets
            parts = []
            for _ in range(rng.randint(1, 40)):
                r = rng.random()
                if r < 0.7:
                    w = rng.choice(WORDS)
                    w = rng.choice([w, w, w.upper(), w.capitalize()])
                    parts.append(w)
                elif r < 0.95:
                    parts.append(rng.choice(SNIPPETS))
                else:
                    parts.append(rng.choice([",", ".", ";", "!", "?", " - ", "(", ")"]))
            seps = [" ", " ", " ", "", ", ", "  ", "\t", "\n"]
            prompts.append("".join(p + rng.choice(seps) for p in parts))
        elif kind < 0.55:  # random assigned code points, mixed with ASCII
            n = rng.randint(1, 30)
            chars = [
                chr(rng.choice(cps)) if rng.random() < 0.6 else rng.choice("abc XYZ 019 .,'&;#<")
                for _ in range(n)
            ]
            prompts.append("".join(chars))
        elif kind < 0.65:  # random code points from one block (combining marks, scripts)
            start = rng.choice(cps)
            block = [c for c in cps if start <= c < start + 256] or [start]
            prompts.append("".join(chr(rng.choice(block)) for _ in range(rng.randint(1, 20))))
        elif kind < 0.80:  # long prompts (past 77 tokens)
            prompts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 160))))
        elif kind < 0.92:  # entity / whitespace / punctuation soup
            pieces = [rng.choice(SNIPPETS[50:]) for _ in range(rng.randint(1, 12))]
            prompts.append(rng.choice(["", " ", "x"]).join(pieces))
        elif kind < 0.93:  # mojibake-like and mixed
            pieces = [rng.choice(MOJIBAKE + SNIPPETS) for _ in range(rng.randint(1, 6))]
            prompts.append(" ".join(pieces))
        elif kind < 0.985:  # generated mojibake of snippets and prompt text
            pieces = [rng.choice(SNIPPETS) for _ in range(rng.randint(1, 4))]
            pieces += [rng.choice(WORDS) for _ in range(rng.randint(0, 4))]
            rng.shuffle(pieces)
            prompts.append(mojibake(rng, " ".join(pieces)))
        else:  # CESU-8 and Java's modified UTF-8 misread
            text = " ".join(rng.choice(SNIPPETS[23:35] + WORDS[:5]) for _ in range(rng.randint(1, 4)))
            data = cesu8(text) if rng.random() < 0.7 else text.encode("utf-8") + b"\xc0\x80x"
            prompts.append(data.decode(rng.choice(MOJIBAKE_ENCODINGS[:3]), errors="replace"))
    return prompts[:count]


def write(out_dir: str, count: int) -> str:
    tok = ClipTokenizer.default()
    tok.save(os.path.join(out_dir, "tokenizer"))
    tok = ClipTokenizer.from_folder(os.path.join(out_dir, "tokenizer"))
    prompts = make_prompts(count)
    path = os.path.join(out_dir, "prompts.bin")
    with open(path, "wb") as fh:
        fh.write(b"GTOK1" + struct.pack("<I", len(prompts)))
        for p in prompts:
            data = p.encode("utf-8")
            ids = tok.tokenize(p)
            padded = tok.encode([p])[0]
            assert len(padded) == MAX_LENGTH
            fh.write(struct.pack("<I", len(data)) + data)
            fh.write(struct.pack(f"<I{len(ids)}i", len(ids), *ids))
            fh.write(struct.pack(f"<{MAX_LENGTH}i", *[int(v) for v in padded]))
    repaired = sum(
        1 for p in prompts if is_bad(p) and ftfy.fix_text(p) != ftfy.fix_text(p, fix_encoding=False)
    )
    print(
        f"wrote {len(prompts)} prompts to {path} ({repaired} changed by ftfy's mojibake repair)", flush=True
    )
    return out_dir


def main(argv: list[str]) -> int:
    check = len(argv) >= 3 and argv[1] == "--check"
    if not check and len(argv) not in (2, 3):
        print("usage: gen_tokenizer_reference.py OUT_DIR [COUNT]", file=sys.stderr)
        return 2
    count_arg = argv[3] if check and len(argv) > 3 else (argv[2] if not check and len(argv) > 2 else None)
    count = int(count_arg) if count_arg else 12000
    try:
        if check:
            with tempfile.TemporaryDirectory() as tmp:
                write(tmp, count)
                return subprocess.call([argv[2], tmp])
        os.makedirs(argv[1], exist_ok=True)
        write(argv[1], count)
    except CheckpointError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return SKIP
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
