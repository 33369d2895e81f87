"""Tokenisers, and the image-placeholder splice on the token side.

Two styles:

* ``"llama_legacy"``: a sentencepiece LLaMA tokenizer reproducing what transformers 4.31's slow ``LlamaTokenizer``
  (``legacy=True``) produced, which every LISA/LLaVA-v1 checkpoint was trained with: the text between added tokens is
  encoded piece by piece, each with sentencepiece's dummy prefix, and whitespace on both sides of non-special added
  tokens (``[SEG]``, ``<im_start>``, ``<im_end>``) is dropped. Decoding joins the pieces around added tokens with a
  space, as 4.31 did.
* ``"default"``: the checkpoint's own tokenizer through ``AutoTokenizer``, used as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

TOKENIZER_STYLES = ("llama_legacy", "default")


def load_tokenizer(path: str | Path, style: str) -> PreTrainedTokenizerBase:
    if style == "llama_legacy":
        tokenizer = SentencePieceBackend.from_pretrained(str(path))
        strip_around_added_tokens(tokenizer)
    elif style == "default":
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; use one of {TOKENIZER_STYLES}")
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA/LISA: pad = unk, id 0
    return tokenizer


def strip_around_added_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make every non-special added token swallow the whitespace on both of its sides (transformers 4.31)."""
    for index, token in list(tokenizer.added_tokens_decoder.items()):
        if not token.special:
            tokenizer._added_tokens_decoder[index] = AddedToken(
                token.content, lstrip=True, rstrip=True, normalized=token.normalized, special=False
            )
    if hasattr(tokenizer, "_update_trie"):
        tokenizer._update_trie()


def add_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str], special: bool = False) -> list[int]:
    """Add tokens (if missing) and return their ids, read from the vocabulary (never ``tokenizer(tok)[0]``)."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=special)
    if isinstance(tokenizer, SentencePieceBackend):
        strip_around_added_tokens(tokenizer)
    return tokenizer.convert_tokens_to_ids(tokens)


def add_seg_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``[SEG]`` (if missing) so that it takes the space before it, and return its id.

    "... at (3, 6) [SEG]." then ends ``")", "[SEG]", "."`` as under LISA's tokenizer, instead of ``")", " ", "[SEG]"``:
    a byte-level BPE would otherwise put a lone space token before every ``[SEG]``, one more new token to learn.
    """
    if "[SEG]" not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken("[SEG]", lstrip=True, rstrip=False, normalized=False, special=False)])
    (seg_id,) = add_tokens(tokenizer, ["[SEG]"])
    return seg_id


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """Id of ``token`` in the vocabulary, or None when absent."""
    return tokenizer.get_vocab().get(token)


def encode_with_image_placeholder(
    tokenizer: PreTrainedTokenizerBase, text: str, image_token: str, image_token_index: int, add_bos: bool
) -> list[int]:
    """Tokenise ``text`` with each ``image_token`` replaced by the id ``image_token_index``.

    Chunks between placeholders are tokenised separately, like LLaVA's ``tokenizer_image_token``; one BOS in front.
    """
    ids: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    for index, chunk in enumerate(text.split(image_token)):
        if index > 0:
            ids.append(image_token_index)
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False))
    return ids


def decode_answer(tokenizer: PreTrainedTokenizerBase, ids: list[int], style: str) -> str:
    """Text of generated ids: special tokens (BOS/EOS/pad) dropped, added tokens such as ``[SEG]`` kept."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in ids if i not in special and i >= 0]
    if style != "llama_legacy":
        return _space_before_stripping_tokens(tokenizer, tokenizer.decode(ids, skip_special_tokens=True)).strip()
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    # sentencepiece itself decodes byte-fallback pieces (<0x70>) the way the original tokenizer did
    decode_run = tokenizer.sp_model.decode
    parts, run = [], []
    for i in ids:
        if i in added:
            if run:
                parts.append(decode_run(run))
            parts.append(tokenizer.added_tokens_decoder[i].content)
            run = []
        else:
            run.append(i)
    if run:
        parts.append(decode_run(run))
    return " ".join(parts).strip()


def train_byte_level_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str], unk_token: str | None = None):
    """A byte-level BPE (GPT-2 style, no prefix space) learnt from ``corpus``: the tokenizer of the tiny test models
    and of the demo world, where no pretrained vocabulary can be downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer)
    return backend


def _space_before_stripping_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """Give back the space an added token with ``lstrip`` swallowed when encoding: "(3, 6)[SEG]" -> "(3, 6) [SEG]"."""
    for token in tokenizer.added_tokens_decoder.values():
        if token.lstrip and not token.special:
            text = re.sub(rf"(?<=\S){re.escape(token.content)}", " " + token.content, text)
    return text
