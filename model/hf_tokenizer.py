"""``tokenizer.json`` (Hugging Face ``tokenizers``) for the LLaMA SentencePiece model, built without protobuf.

transformers converts a bare ``tokenizer.model`` through sentencepiece's generated protobuf module, which
fails where the installed protobuf is older than the one it was generated with. An export that carries
``tokenizer.json`` needs no conversion. The pipeline is the one transformers' ``LlamaTokenizer`` builds:
byte-level fallback BPE over the SentencePiece pieces (merges ordered by the merged piece's score),
SentencePiece's dummy prefix ``▁`` and spaces as ``▁`` (as the Llama-2 repository's own ``tokenizer.json``),
``<s>`` prepended. Tests hold it equal to SentencePiece on real text (literal ``<s>``/``</s>`` in text become
the special ids).
"""

from __future__ import annotations

import sentencepiece as spm

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def vocab_and_merges(proto: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Pieces -> ids, and BPE merges: every split (left, right) of a piece into two pieces, higher scores
    first."""
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    scored = []
    for piece, index in vocab.items():
        if sp.is_control(index) or sp.is_unknown(index) or sp.is_byte(index):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                scored.append(
                    (-sp.get_score(index), len(left), len(right), vocab[left], vocab[right], left, right)
                )
    scored.sort()
    return vocab, [(left, right) for *_, left, right in scored]


def tokenizer_json(proto: bytes) -> str | None:
    """The serialized fast tokenizer for ``proto``, or None when the ``tokenizers`` package is not
    installed."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
        from tokenizers.models import BPE
    except ImportError:
        return None
    vocab, merges = vocab_and_merges(proto)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (UNK, BOS, EOS)])
    return tokenizer.to_str()
