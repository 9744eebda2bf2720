"""Text to fixed-length token ids with a Hugging Face tokenizer.

`load('demo')` builds an offline word-level tokenizer for the demo vocabulary; any other name is
a local directory (or a hub name already in the local cache) loaded with `AutoTokenizer`. Every
sequence ends with the end-of-text token, also when it is truncated, so `eos` pooling always
finds it; rows are padded with the pad token (the end-of-text token when there is none, which
makes it "sticky" for `last` pooling).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import transformers
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from vlx.data import demo
from vlx.errors import ConfigError

DEMO_SPECIALS = ("<pad>", "<eos>", "<unk>")  # EOS is not 2: transformers' CLIP treats 2 apart


class Tokenizer:
    """Wraps a `PreTrainedTokenizerFast`; call it on a list of strings."""

    def __init__(self, hf: transformers.PreTrainedTokenizerBase, context_length: int):
        if hf.eos_token_id is None:
            raise ConfigError(f"tokenizer {hf.name_or_path!r} has no end-of-text (eos) token")
        self.hf = hf
        self.context_length = context_length
        self.eos_id = hf.eos_token_id
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """int32 [len(texts), context_length] token ids, and how many texts were truncated."""
        length = self.context_length
        out = np.full((len(texts), length), self.pad_id, dtype=np.int32)
        truncated = 0
        for row, ids in enumerate(self.hf(list(texts))["input_ids"]):
            if not ids or ids[-1] != self.eos_id:
                ids = [*ids, self.eos_id]
            if len(ids) > length:
                ids = [*ids[: length - 1], self.eos_id]
                truncated += 1
            out[row, : len(ids)] = ids
        return out, truncated

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))


def demo_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over the demo vocabulary; appends <eos>."""
    vocab = {tok: i for i, tok in enumerate([*DEMO_SPECIALS, *demo.WORDS])}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", vocab["<eos>"])]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


def train_bpe(texts: list[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """A lower-casing byte-level BPE tokenizer trained on `texts`; appends <eos>, pads <pad>.

    Byte-level: any text encodes, nothing is ever unknown."""
    raw = RawTokenizer(models.BPE())
    raw.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer)
    raw.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", raw.token_to_id("<eos>"))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>"
    )


# The class names transformers writes for a plain `tokenizers` tokenizer (vlx's own: the demo's
# and those `vlx data build` trains). They load without AutoTokenizer, whose config machinery
# imports PyTorch when it is installed (3 s, for nothing).
_PLAIN = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load(name: str, context_length: int) -> Tokenizer:
    if name == "demo":
        return Tokenizer(demo_tokenizer(), context_length)
    try:
        loader = (
            transformers.PreTrainedTokenizerFast if _plain(name) else transformers.AutoTokenizer
        )
        hf = loader.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "directory" if Path(name).exists() else "name (nothing is downloaded at run time)"
        raise ConfigError(
            f"data.tokenizer={name!r}: cannot load a tokenizer from this {where}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    return Tokenizer(hf, context_length)


def _plain(name: str) -> bool:
    """Whether `name` is a directory holding a plain `tokenizers` tokenizer."""
    config = Path(name) / "tokenizer_config.json"
    if not (config.is_file() and (Path(name) / "tokenizer.json").is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("tokenizer_class") in _PLAIN
    except (OSError, ValueError):
        return False
