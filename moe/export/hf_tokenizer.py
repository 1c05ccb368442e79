"""Our byte vocabulary as a Hugging Face fast tokenizer, so `AutoTokenizer.from_pretrained(dir)` loads it with no code.

Token id = byte value for the 256 bytes, then the specials of moe.model.tokenizer (BOS 256, EOS 257, PAD 258 and
the reserved 259). A byte vocabulary cannot be a plain word list: a byte such as 0xC3 is no string on its own. So
the `tokenizers` pipeline is: ByteLevel pre-tokenizer (no regex split, no prefix space), which writes each UTF-8
byte as one printable stand-in character (the GPT-2 byte table), a BPE model with exactly those 256 characters as
its vocabulary and no merges, so every byte is one token, and the ByteLevel decoder, which maps the stand-ins back
to bytes and decodes the joined bytes as UTF-8. Decoding therefore works across tokens (a character split over
several ids comes back whole) and never fails: bytes that are not valid UTF-8 become U+FFFD, as in our own decode.

No BOS or EOS is added on encode: our models train on documents each followed by EOS, with no BOS, so a prompt is
just its bytes; and text that spells a special token ("</s>") stays bytes too, as in moe.model.tokenizer.encode.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from moe.model.tokenizer import BOS, EOS, PAD, VOCAB_SIZE

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
RESERVED_TOKEN = "<reserved_259>"
SPECIAL_TOKENS = {BOS: BOS_TOKEN, EOS: EOS_TOKEN, PAD: PAD_TOKEN, 259: RESERVED_TOKEN}
"""Special ids above the byte range and the token strings Hugging Face shows for them."""


def byte_stand_ins() -> list[str]:
    """The printable character the ByteLevel pre-tokenizer writes for each byte value 0..255 (GPT-2's table).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 (controls, space, 0x7F-0xA0,
    0xAD) take the code points 256, 257, ... in byte order, so no stand-in is whitespace or invisible.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def build_tokenizer(model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """A `transformers` fast tokenizer over our 260 ids.

    `model_max_length` (bytes) is the model's context, so `truncation=True` keeps the last bytes the model can read.
    Padding goes on the left, where batched generation needs it.
    """
    vocab = {ch: b for b, ch in enumerate(byte_stand_ins())}
    vocab.update({tok: i for i, tok in SPECIAL_TOKENS.items()})
    assert len(vocab) == VOCAB_SIZE, "byte stand-ins and special tokens must not collide"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # special, so skip_special_tokens drops them; split_special_tokens below keeps a literal "</s>" in text as bytes
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.values()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[RESERVED_TOKEN],
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        truncation_side="left",
        split_special_tokens=True,  # text is always its UTF-8 bytes, as in moe.model.tokenizer.encode
        **({"model_max_length": model_max_length} if model_max_length else {}),
    )


def export_tokenizer(out_dir: str | Path, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json and tokenizer_config.json into `out_dir` (overwriting them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(model_max_length).save_pretrained(out_dir)
    return out_dir
