import numpy as np
import pytest

from fastslow_jax.data import shapes
from fastslow_jax.data.tokenizer import BUILTIN_VOCABS, Tokenizer, wordpiece_vocab


def test_shipped_vocab_is_the_generated_one():
    with open(BUILTIN_VOCABS["shapes"], encoding="utf-8") as f:
        shipped = f.read().split("\n")[:-1]
    assert shipped == wordpiece_vocab(shapes.WORDS), "run: python -m fastslow_jax.data.tokenizer"


def test_encoding_layout_and_no_unknown_words():
    tok = Tokenizer("shapes", max_len=10)
    vocab = wordpiece_vocab(shapes.WORDS)
    ids = tok(["A small red circle", b"a large blue square"])
    assert ids.dtype == np.int32 and ids.shape == (2, 10)
    want = [vocab.index(t) for t in ("[CLS]", "a", "small", "red", "circle", "[SEP]")] + [0] * 4
    assert ids[0].tolist() == want
    assert tok.decode(ids[1]) == "a large blue square"
    spec = shapes.ShapesSpec(num_train=8, num_val=8, num_test=8)
    captions = [c for ex in shapes.generate_split(spec, "test") for c in ex["captions"]]
    long_tok = Tokenizer("shapes", max_len=64)
    assert not (long_tok(captions) == long_tok.unk_id).any()


def test_unknown_word_falls_back_to_wordpieces_and_truncation_keeps_sep():
    tok = Tokenizer("shapes", max_len=6)
    ids = tok(["zebra circle circle circle circle"])[0]
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.unk_id not in ids.tolist()
    # z ##e ##b ##r fill the 4 slots between [CLS] and [SEP]; the rest is truncated
    assert tok.decode(ids[1:-1]) == "zebr"


def test_vocab_from_directory_and_missing(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"]) + "\n")
    tok = Tokenizer(str(tmp_path), max_len=4)
    assert tok(["hello"])[0].tolist() == [2, 5, 3, 0]
    with pytest.raises(FileNotFoundError, match="tokenizer vocab 'nowhere/vocab.txt' not found"):
        Tokenizer("nowhere/vocab.txt", max_len=4)
