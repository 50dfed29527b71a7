"""CLIP's text tokenizer (ViT-L/14, as used by SD 1.x and GLIGEN) on the `tokenizers` library.

Equal to OpenAI CLIP's SimpleTokenizer and to transformers' CLIPTokenizer for
openai/clip-vit-large-patch14 called with ``padding="max_length", truncation=True, max_length=77``:

    ids = [BOS 49406] + BPE(clean(text)) + [EOS 49407], cut to 77 keeping EOS last, padded with 49407

``clean`` is CLIP's text cleanup (ftfy.fix_text, html.unescape twice, whitespace collapse,
lowercase); without it curly quotes, HTML entities and full-width text tokenize differently.

The vocabulary comes from a tokenizer folder (vocab.json + merges.txt, or tokenizer.json; e.g. a
diffusers ``tokenizer/`` folder or one written by ``save``) or from CLIP's own BPE file
``bpe_simple_vocab_16e6.txt.gz`` that PyPI packages ship (clip-anytorch, open-clip-torch,
openai-clip); ``default()`` finds one without importing those packages.
"""

from __future__ import annotations

import gzip
import html
import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from gligen_rt.core.errors import CheckpointError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77  # CLIP's context length
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
ENV_VAR = "GLIGEN_RT_CLIP_VOCAB"
# PyPI distributions that ship BPE_FILENAME, and their import names (searched, never imported)
_BPE_DISTRIBUTIONS = ("clip-anytorch", "open-clip-torch", "openai-clip")
_BPE_PACKAGES = ("clip", "open_clip")
_NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of the BPE file
# CLIP's word split (SimpleTokenizer.pat); text is already lowercase, so no IGNORECASE needed
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WHITESPACE = re.compile(r"\s+")
_INSTALL_HINT = (
    f"pip install --no-deps clip-anytorch, or set {ENV_VAR} to a CLIP bpe .txt.gz or tokenizer folder"
)


def clean_text(text: str) -> str:
    """CLIP's cleanup: ftfy.fix_text, html.unescape twice, strip, collapse whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _one_line(path: Path | str) -> str:
    return str(path).replace("\n", "\\n")


class ClipTokenizer:
    """CLIP BPE tokenizer: text -> (n, 77) int64 ids.

    Attributes:
        vocab: token -> id (49408 entries for CLIP).
        merges: BPE merges in rank order.
        bos_id / eos_id / pad_id: 49406 / 49407 / 49407 for CLIP (pad = EOS, as transformers).
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> None:
        for special in (BOS, EOS):
            if special not in vocab:
                raise CheckpointError(
                    f"CLIP vocabulary lacks {special}: not a CLIP tokenizer ({_INSTALL_HINT})"
                )
        self.vocab = dict(vocab)
        self.merges = [(a, b) for a, b in merges]
        self.bos_id = self.vocab[BOS]
        self.eos_id = self.vocab[EOS]
        self.pad_id = self.eos_id
        self._tok = self._build(self.vocab, self.merges)

    @staticmethod
    def _build(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
        # Same pipeline as transformers' CLIPTokenizer (tokenizers backend).
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                unk_token=EOS,
                continuing_subword_prefix="",
                end_of_word_suffix=END_OF_WORD,
                fuse_unk=False,
            )
        )
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(
            [AddedToken(BOS, special=True, normalized=True), AddedToken(EOS, special=True, normalized=True)]
        )
        return tok

    def __len__(self) -> int:
        return len(self.vocab)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_bpe(cls, path: str | os.PathLike[str]) -> ClipTokenizer:
        """From CLIP's ``bpe_simple_vocab_16e6.txt.gz``, deriving the vocabulary as SimpleTokenizer does:
        the 256 byte characters, the same with ``</w>``, every merge joined, then BOS and EOS."""
        path = Path(path)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"cannot read CLIP BPE file {_one_line(path)}: {exc} ({_INSTALL_HINT})"
            ) from None
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise CheckpointError(f"{_one_line(path)} is not CLIP's BPE merges file ({_INSTALL_HINT})")
        chars = list(bytes_to_unicode().values())
        tokens = chars + [c + END_OF_WORD for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
        return cls({t: i for i, t in enumerate(tokens)}, merges)  # type: ignore[arg-type]

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> ClipTokenizer:
        """From a tokenizer folder: vocab.json + merges.txt (preferred) or tokenizer.json."""
        folder = Path(path)
        vocab_file, merges_file, json_file = (
            folder / "vocab.json",
            folder / "merges.txt",
            folder / "tokenizer.json",
        )
        try:
            if vocab_file.is_file() and merges_file.is_file():
                vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
                lines = merges_file.read_text(encoding="utf-8").split("\n")
                merges = [
                    tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")
                ]
            elif json_file.is_file():
                model = json.loads(json_file.read_text(encoding="utf-8"))["model"]
                vocab = model["vocab"]
                merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            else:
                raise CheckpointError(
                    f"no CLIP tokenizer in {_one_line(folder)}: expected vocab.json + merges.txt or tokenizer.json "
                    f"({_INSTALL_HINT})"
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read the tokenizer in {_one_line(folder)}: {exc}") from None
        if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
            raise CheckpointError(
                f"malformed vocab.json / merges in {_one_line(folder)}: expected a CLIP BPE tokenizer"
            )
        return cls(vocab, merges)  # type: ignore[arg-type]

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ClipTokenizer:
        """From a tokenizer folder, a tokenizer.json file, or a CLIP BPE file."""
        p = Path(path)
        if p.is_dir():
            return cls.from_folder(p)
        if p.is_file():
            return cls.from_folder(p.parent) if p.suffix == ".json" else cls.from_bpe(p)
        raise CheckpointError(f"CLIP vocabulary {_one_line(p)} does not exist ({_INSTALL_HINT})")

    @classmethod
    def default(cls) -> ClipTokenizer:
        """The tokenizer from ``$GLIGEN_RT_CLIP_VOCAB`` if set, else from the BPE file an installed
        PyPI package ships (found through package metadata; the package is not imported)."""
        env = os.environ.get(ENV_VAR)
        if env:
            return cls.from_path(env)
        found = find_bpe_file()
        if found is None:
            raise CheckpointError(f"CLIP's BPE vocabulary ({BPE_FILENAME}) was not found: {_INSTALL_HINT}")
        return cls.from_bpe(found)

    # -- use ----------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of ``clean_text(text)``, without BOS/EOS and without truncation."""
        return self._tok.encode(clean_text(text), add_special_tokens=False).ids

    def encode(self, texts: Sequence[str], max_length: int = MAX_LENGTH) -> np.ndarray:
        """CLIP input ids.

        Args:
            texts: n strings (prompts or phrases); a bare string is rejected.
            max_length: output width (77 for CLIP), >= 2.

        Returns:
            (n, max_length) int64: [BOS] tokens [EOS] pad..., truncated so the last kept id is EOS,
            padded with ``pad_id`` (49407).
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a string")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        # one encode() per text, not encode_batch(): keeps tokenizers' thread pool (and its
        # fork warning) out of the runtime; prompts are few and short
        token_ids = [self.tokenize(t) for t in texts]
        out = np.full((len(token_ids), max_length), self.pad_id, dtype=np.int64)
        for row, ids in zip(out, token_ids):
            kept = [self.bos_id, *ids[: max_length - 2], self.eos_id]
            row[: len(kept)] = kept
        return out

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json (each via a
        temporary name, then renamed), readable by this class and by
        ``transformers.CLIPTokenizer.from_pretrained(folder)``. Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": MAX_LENGTH,
            "do_lower_case": True,
            "errors": "replace",
            "add_prefix_space": False,
            **special,
        }
        files = {
            "vocab.json": json.dumps(self.vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
            "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(special, indent=2),
        }
        for name, text in files.items():
            tmp = folder / f".{name}.tmp{os.getpid()}"
            try:
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, folder / name)
            finally:
                tmp.unlink(missing_ok=True)
        return folder


def find_bpe_file() -> Path | None:
    """CLIP's BPE file from an installed distribution, or None. Looks at distribution file lists,
    then at the packages' folders via ``importlib.util.find_spec`` (neither imports the package)."""
    for dist_name in _BPE_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            if f.name == BPE_FILENAME:
                p = Path(str(dist.locate_file(f)))
                if p.is_file():
                    return p
    for pkg in _BPE_PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            p = Path(loc) / BPE_FILENAME
            if p.is_file():
                return p
    return None
