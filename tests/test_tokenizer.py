"""CLIP tokenizer (gligen_rt.core.tokenizer) against transformers' CLIPTokenizer and CLIP's own
SimpleTokenizer, built from the BPE file that clip-anytorch ships."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from gligen_rt.core import tokenizer as tokmod
from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.tokenizer import ClipTokenizer, clean_text

PROMPTS = [
    "a photo of a cat",
    "",
    "   ",
    "Hello, World!!! 123 4.5e6 $99.99 -- (parens) [brackets] {braces} a/b\\c @#%^&*",
    "it’s a “quoted” ‘single’ — em dash… don't",
    "café naïve Ångström Straße ΣΊΣΥΦΟΣ",
    "ＦＵＬＬ　ｗｉｄｔｈ ｔｅｘｔ",
    "&amp;lt;b&amp;gt; tags &quot;x&quot; &#39;",
    "日本語のテキスト 中文 한국어 emoji 🐱🚀 👩‍👩‍👧",
    "a <|endoftext|> b <|startoftext|>",
    "  lots   of\n\twhitespace  ",
    "we'll they're I'M YOU'VE she'd it's",
    "mixed123abc 1st 2nd 3.14159",
    "ﬁne ligature, x\u0301 combining, zero\u200bwidth",
    "a red apple on a wooden table next to a glass of milk, highly detailed, 4k " * 4,  # > 77 tokens
]

CAT = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    if tokmod.find_bpe_file() is None:
        pytest.skip("CLIP's BPE file is not installed (pip install --no-deps clip-anytorch)")
    return ClipTokenizer.from_bpe(tokmod.find_bpe_file())


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return tok.save(tmp_path_factory.mktemp("tokenizer"))


def _padded(ids: list[int], length: int = 77) -> list[int]:
    return ids + [49407] * (length - len(ids))


def test_a_photo_of_a_cat(tok):
    ids = tok.encode(["a photo of a cat"])
    assert ids.shape == (1, 77) and ids.dtype == np.int64
    assert ids[0].tolist() == _padded(CAT)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, len(tok)) == (49406, 49407, 49407, 49408)


def test_empty_and_long(tok):
    ids = tok.encode(["", PROMPTS[-1]])
    assert ids[0].tolist() == _padded([49406, 49407])
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407  # truncated so the last kept id is EOS
    assert len(tok.tokenize(PROMPTS[-1])) > 75
    assert ids[1, 1:76].tolist() == tok.tokenize(PROMPTS[-1])[:75]
    short = tok.encode(["a photo of a cat"], max_length=5)
    assert short.tolist() == [[49406, 320, 1125, 539, 49407]]
    assert tok.encode([]).shape == (0, 77)
    with pytest.raises(TypeError):
        tok.encode("a photo of a cat")  # type: ignore[arg-type]


def test_equals_transformers(tok, saved):
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer.from_pretrained(saved)
    ours = tok.encode(PROMPTS)
    # transformers 5 has no ftfy/html cleanup: it matches CLIP on cleaned text
    cleaned = hf([clean_text(p) for p in PROMPTS], padding="max_length", max_length=77, truncation=True)
    np.testing.assert_array_equal(ours, np.array(cleaned["input_ids"]))
    # ... and on plain text already clean
    plain = [p for p in PROMPTS if p.isascii() and "&" not in p]
    raw = hf(plain, padding="max_length", max_length=77, truncation=True)
    np.testing.assert_array_equal(tok.encode(plain), np.array(raw["input_ids"]))


def test_equals_clip_simple_tokenizer(tok):
    """CLIP's own SimpleTokenizer, loaded from its single file next to the BPE file. The `clip`
    package itself is never imported (it needs torchvision)."""
    pytest.importorskip("regex")
    source = tokmod.find_bpe_file().parent / "simple_tokenizer.py"
    if not source.is_file():
        pytest.skip("no simple_tokenizer.py beside the BPE file")
    spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer_oracle", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clip_tok = module.SimpleTokenizer(str(tokmod.find_bpe_file()))
    assert "clip" not in sys.modules
    expected = np.array([_padded([49406, *clip_tok.encode(p)[:75], 49407]) for p in PROMPTS])
    np.testing.assert_array_equal(tok.encode(PROMPTS), expected)


def test_save_round_trip(tok, saved):
    assert sorted(p.name for p in saved.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]  # no temporary files left behind
    assert (saved / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    again = ClipTokenizer.from_folder(saved)
    assert again.vocab == tok.vocab and again.merges == tok.merges
    np.testing.assert_array_equal(again.encode(PROMPTS), tok.encode(PROMPTS))


def test_from_tokenizer_json(tok, saved, tmp_path):
    """A folder with only tokenizer.json (what transformers' save_pretrained writes)."""
    transformers = pytest.importorskip("transformers")
    transformers.CLIPTokenizer.from_pretrained(saved).save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    np.testing.assert_array_equal(ClipTokenizer.from_folder(tmp_path).encode(PROMPTS), tok.encode(PROMPTS))
    np.testing.assert_array_equal(
        ClipTokenizer.from_path(tmp_path / "tokenizer.json").encode(["a cat"]), tok.encode(["a cat"])
    )


def test_default_finds_the_bpe_file_without_importing(monkeypatch, tok):
    monkeypatch.delenv(tokmod.ENV_VAR, raising=False)
    had_clip = "clip" in sys.modules
    default = ClipTokenizer.default()
    assert default.vocab == tok.vocab
    assert ("clip" in sys.modules) == had_clip


def test_env_var(monkeypatch, tok, saved, tmp_path):
    monkeypatch.setenv(tokmod.ENV_VAR, str(saved))
    assert ClipTokenizer.default().encode(["a photo of a cat"])[0, :7].tolist() == CAT
    bpe = shutil.copy(tokmod.find_bpe_file(), tmp_path / "vocab.txt.gz")
    monkeypatch.setenv(tokmod.ENV_VAR, str(bpe))
    assert ClipTokenizer.default().vocab == tok.vocab
    monkeypatch.setenv(tokmod.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(CheckpointError) as info:
        ClipTokenizer.default()
    assert "\n" not in str(info.value) and tokmod.ENV_VAR in str(info.value)


def test_missing_vocab_errors_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(CheckpointError) as info:
        ClipTokenizer.from_folder(tmp_path)
    assert "\n" not in str(info.value) and "vocab.json" in str(info.value)

    monkeypatch.delenv(tokmod.ENV_VAR, raising=False)
    monkeypatch.setattr(tokmod, "find_bpe_file", lambda: None)
    with pytest.raises(CheckpointError) as info:
        ClipTokenizer.default()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install --no-deps clip-anytorch" in message and tokmod.ENV_VAR in message


def test_corrupt_files_are_checkpoint_errors(tmp_path):
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(CheckpointError):
        ClipTokenizer.from_bpe(tmp_path / "bad.gz")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        ClipTokenizer.from_folder(tmp_path)  # no BOS/EOS: not CLIP
    assert "\n" not in str(info.value)
