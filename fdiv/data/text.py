r"""Text corpora for language-model experiments, tokenised with a byte-level BPE trained locally.

- ``"stdlib"`` (embedded, no download): the running interpreter's own standard library, the
  ``Lib/*.py`` files at the top of ``sysconfig.get_paths()["stdlib"]`` (168 files, 4.7 MB for
  CPython 3.11; written by the CPython developers, present on every machine that runs fdiv).
  Files, not lines, are split, by a fixed rule on the file's name
  (:func:`file_split`: the first byte of ``sha256(name)`` modulo 10: 0 test, 1 valid, else train),
  so a file never straddles two splits and the split does not depend on the file set. The corpus
  depends on the Python version; the cache key includes it.
- TFDS text sets (``"tiny_shakespeare"`` and any dataset with a ``"text"`` feature): every record
  of the split, read with ``tfds.data_source`` from a prepared TFDS directory (never downloaded).

:func:`bpe_tokenizer` trains a byte-level BPE (the ``tokenizers`` package; GPT-2's byte alphabet,
so every byte sequence is representable and nothing maps to an unknown token) on the *train*
split only, with one special token ``<|endoftext|>`` (id 0) that separates documents; it is cached
as JSON under ``data_dir`` (default ``$FDIV_DATA_DIR`` or ``~/.cache/fdiv``) and trained once.
:func:`load_text` returns a split as :class:`TokenBlocks`: the split's documents tokenised and
concatenated (each followed by ``<|endoftext|>``), cut into non-overlapping blocks of
``block_length + 1`` tokens (inputs and their next tokens), with random access by block index like
every :class:`fdiv.data.Dataset`.

Requires ``tokenizers`` (the ``experiments`` extra).
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import sysconfig

import numpy as np

__all__ = [
    "END_OF_TEXT",
    "TokenBlocks",
    "bpe_tokenizer",
    "corpus_texts",
    "encode_documents",
    "file_split",
    "load_text",
    "stdlib_files",
]

END_OF_TEXT = "<|endoftext|>"
SPLITS = ("train", "valid", "test")
_TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def stdlib_files() -> list[str]:
    """The top-level ``*.py`` files of the running interpreter's standard library, sorted."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def file_split(path: str) -> str:
    """``"test"``, ``"valid"`` or ``"train"`` for a file: the first byte of the SHA-256 of its base
    name, modulo 10 (0: test, 1: valid, 2-9: train), about 10 / 10 / 80 % of the files."""
    bucket = hashlib.sha256(os.path.basename(path).encode()).digest()[0] % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed splits: {', '.join(SPLITS)}")


def corpus_texts(name: str, split: str, *, data_dir=None, files=None) -> list[str]:
    """The documents of ``split`` of corpus ``name``: ``"stdlib"`` (one document per file, in name
    order; ``files`` restricts the corpus to a list of paths, e.g. a slice for tests) or a TFDS
    text dataset (one document per record)."""
    _check_split(split)
    if name == "stdlib":
        paths = stdlib_files() if files is None else sorted(files)
        out = []
        for path in paths:
            if file_split(path) == split:
                with open(path, encoding="utf-8", errors="replace") as f:
                    out.append(f.read())
        return out
    return _tfds_texts(name, split, data_dir=data_dir)


def _tfds_texts(name: str, split: str, *, data_dir=None) -> list[str]:
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(
            name, split=_TFDS_SPLITS[split], data_dir=data_dir, download=False
        )
    except Exception as err:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {data_dir or 'the TFDS default dir'}; "
                f"fdiv never downloads: prepare it once with `tfds build {name} "
                "--file_format=array_record` (on a machine with network access)"
            ) from err
        raise
    texts = []
    for i in range(len(source)):
        text = source[i]["text"]
        texts.append(
            text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        )
    return texts


def _cache_path(data_dir, name: str, files, filename: str) -> str:
    """``<data_dir>/text/<corpus key>/<filename>``; ``data_dir`` defaults to ``$FDIV_DATA_DIR`` or
    ``~/.cache/fdiv``."""
    root = data_dir or os.environ.get("FDIV_DATA_DIR") or os.path.expanduser("~/.cache/fdiv")
    return os.path.join(root, "text", _corpus_key(name, files), filename)


def _corpus_key(name: str, files) -> str:
    """A cache key: the corpus name, the Python version for the stdlib (its files change with it),
    and a hash of the file list when the corpus is restricted."""
    key = name
    if name == "stdlib":
        key += f"-py{sys.version_info.major}.{sys.version_info.minor}"
        if files is not None:
            digest = hashlib.sha256("\n".join(sorted(os.path.basename(f) for f in files)).encode())
            key += f"-{digest.hexdigest()[:12]}"
    return key


def bpe_tokenizer(name: str = "stdlib", vocab_size: int = 8192, *, data_dir=None, files=None):
    """The byte-level BPE of corpus ``name`` with ``vocab_size`` tokens (``<|endoftext|>`` = 0),
    trained on the train split on first use and cached as JSON (``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size must be an int >= 257 (the 256 bytes and <|endoftext|>), got {vocab_size!r}")  # fmt: skip
    path = _cache_path(data_dir, name, files, f"bpe{vocab_size}.json")
    if os.path.exists(path):
        return Tokenizer.from_file(path)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(name, "train", data_dir=data_dir, files=files), trainer)  # fmt: skip
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    tokenizer.save(tmp)
    os.replace(tmp, path)  # atomic: concurrent first uses never read a half-written file
    return tokenizer


class TokenBlocks:
    """A token stream cut into ``len(self)`` non-overlapping blocks of ``block_length + 1`` tokens:
    ``get(indices)`` returns ``{"tokens": int32 [n, block_length + 1]}`` (a model reads
    ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``). The stream's tail shorter than a block is
    dropped. Random access by block index, like :class:`fdiv.data.Dataset`."""

    def __init__(self, tokens, block_length: int, *, vocab_size: int, name: str = "", split: str = ""):  # fmt: skip
        if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
        self.tokens = np.asarray(tokens, np.int32)
        self.block_length, self.vocab_size = block_length, vocab_size
        self.name, self.split = name, split
        if len(self) == 0:
            raise ValueError(
                f"{name or 'the'} {split} stream has {self.tokens.size} tokens: fewer than one "
                f"block of {block_length + 1}"
            )

    def __len__(self) -> int:
        return max(self.tokens.size - 1, 0) // self.block_length

    def get(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"block index out of range for {len(self)} blocks")
        offsets = indices[:, None] * self.block_length + np.arange(self.block_length + 1)
        return {"tokens": self.tokens[offsets]}

    def __repr__(self) -> str:
        return f"TokenBlocks(name={self.name!r}, split={self.split!r}, blocks={len(self)}, block_length={self.block_length})"  # fmt: skip


def encode_documents(texts, tokenizer) -> np.ndarray:
    """The documents tokenised and concatenated, each followed by ``<|endoftext|>``: int32 ``[n]``."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    pieces = []
    for encoding in tokenizer.encode_batch(list(texts)):
        pieces.append(np.asarray(encoding.ids, np.int32))
        pieces.append(np.array([eot], np.int32))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


def load_text(
    name: str = "stdlib",
    split: str = "train",
    *,
    vocab_size: int = 8192,
    block_length: int = 128,
    data_dir=None,
    files=None,
) -> TokenBlocks:
    """Split ``split`` of corpus ``name`` as :class:`TokenBlocks` under its BPE of ``vocab_size``
    (trained on the train split, :func:`bpe_tokenizer`). The token stream is cached beside the
    tokenizer (``<split>.npy``)."""
    _check_split(split)
    tokenizer = bpe_tokenizer(name, vocab_size, data_dir=data_dir, files=files)
    path = _cache_path(data_dir, name, files, f"bpe{vocab_size}-{split}.npy")
    if os.path.exists(path):
        tokens = np.load(path)
    else:
        tokens = encode_documents(corpus_texts(name, split, data_dir=data_dir, files=files), tokenizer)  # fmt: skip
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, tokens)
        os.replace(tmp, path)
    return TokenBlocks(tokens, block_length, vocab_size=tokenizer.get_vocab_size(), name=name, split=split)  # fmt: skip
