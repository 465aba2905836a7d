"""fdiv.data.text: the standard-library corpus split by file, a locally trained byte-level BPE
(lossless round trip, cached), token blocks, and the TFDS text loader on mock data."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from fdiv.data import text

# A small slice of the corpus (the smallest files of every split) keeps BPE training instant.
FILES = sorted(text.stdlib_files(), key=os.path.getsize)[:40]


def test_files_are_split_by_name_about_ten_ten_eighty():
    files = text.stdlib_files()
    assert len(files) > 100 and all(f.endswith(".py") for f in files)
    counts = collections.Counter(text.file_split(f) for f in files)
    assert set(counts) == {"train", "valid", "test"}
    assert 0.6 < counts["train"] / len(files) < 0.9 and counts["test"] > 5 and counts["valid"] > 5
    # the rule looks at the base name only: the same file elsewhere lands in the same split
    assert all(text.file_split(f) == text.file_split(os.path.join("/x", os.path.basename(f))) for f in files)  # fmt: skip
    docs = {s: text.corpus_texts("stdlib", s, files=FILES) for s in text.SPLITS}
    assert sum(map(len, docs.values())) == len(FILES)
    with open(FILES[0], encoding="utf-8") as f:
        assert f.read() in docs[text.file_split(FILES[0])]


def test_bpe_round_trips_every_document_and_is_cached(tmp_path):
    tokenizer = text.bpe_tokenizer("stdlib", 300, data_dir=str(tmp_path), files=FILES)
    assert tokenizer.get_vocab_size() == 300 and tokenizer.token_to_id(text.END_OF_TEXT) == 0
    for doc in text.corpus_texts("stdlib", "test", files=FILES) + ["é ü 漢字 \x00\t"]:
        assert tokenizer.decode(tokenizer.encode(doc).ids) == doc  # bytes in, bytes out
    (cached,) = list((tmp_path / "text").glob("*/bpe300.json"))
    stamp = cached.stat().st_mtime_ns
    again = text.bpe_tokenizer("stdlib", 300, data_dir=str(tmp_path), files=FILES)
    assert cached.stat().st_mtime_ns == stamp and again.get_vocab() == tokenizer.get_vocab()

    blocks = text.load_text("stdlib", "valid", vocab_size=300, block_length=16, data_dir=str(tmp_path), files=FILES)  # fmt: skip
    docs = text.corpus_texts("stdlib", "valid", files=FILES)
    stream = np.concatenate([np.append(tokenizer.encode(d).ids, 0) for d in docs])
    np.testing.assert_array_equal(blocks.tokens, stream)
    assert len(blocks) == (stream.size - 1) // 16
    got = blocks.get(np.array([0, 2]))["tokens"]
    np.testing.assert_array_equal(got, np.stack([stream[0:17], stream[32:49]]))
    np.testing.assert_array_equal(blocks.get(np.array([1]))["tokens"][0, 0], got[0, -1])
    with pytest.raises(IndexError):
        blocks.get(np.array([len(blocks)]))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="allowed splits: train, valid, test"):
        text.corpus_texts("stdlib", "validation")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        text.bpe_tokenizer("stdlib", 100, data_dir=str(tmp_path), files=FILES)
    with pytest.raises(ValueError, match="block_length must be an int >= 1"):
        text.TokenBlocks(np.arange(10), 0, vocab_size=10)
    with pytest.raises(ValueError, match="fewer than one block"):
        text.TokenBlocks(np.arange(5), 8, vocab_size=10)
    with pytest.raises(FileNotFoundError, match="tfds build tiny_shakespeare"):
        text.corpus_texts("tiny_shakespeare", "train", data_dir=str(tmp_path))


def test_tfds_text_on_mock_data(tmp_path, tfds_mock):
    _, mock = tfds_mock
    with mock(num_examples=3):
        docs = text.corpus_texts("tiny_shakespeare", "valid")
        assert len(docs) == 3 and all(isinstance(d, str) and d for d in docs)
        blocks = text.load_text("tiny_shakespeare", "test", vocab_size=260, block_length=4, data_dir=str(tmp_path))  # fmt: skip
    assert blocks.get(np.array([0]))["tokens"].shape == (1, 5)
