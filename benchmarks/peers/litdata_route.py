"""litdata, the pre-tokenized route: ``convert`` (``optimize`` with a TokensLoader) once, then ``pass``.

``convert``: ``litdata.optimize`` over the shards (one input per shard, one worker process: the peer of our
``build manifest --workers 1``); each kept document (the same OpenELM characters + tokens rule) is written as
one int16 tensor BOS + ids + EOS (LLaMA ids < 32768), chunks of 2049 x 1024 tokens (the TinyLlama recipe, with
2-byte ids instead of 4). ``pass``: ``StreamingDataset(TokensLoader(block_size=2049), shuffle=False)``
through a ``StreamingDataLoader`` (batch 8, no workers): one natural pass over rows of 2049 tokens.

    python litdata_route.py convert --shards shards.json --tokenizer tokenizer.model --out DIR
    python litdata_route.py pass --out DIR
"""

from __future__ import annotations

import os

import common

_SP = None


def tokenize_shard(path: str):
    """(in litdata's worker) every kept document of one shard, framed, as an int16 tensor."""
    import torch

    global _SP
    if _SP is None:
        _SP = common.sentencepiece(os.environ["PEER_TOKENIZER"])
    for docs in common.kept_token_batches([path], _SP):
        for ids in docs:
            yield torch.tensor([common.BOS, *ids, common.EOS], dtype=torch.int16)


def convert(args) -> None:
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    os.environ["PEER_TOKENIZER"] = args.tokenizer
    paths = [p for group in common.shards(args.shards).values() for p in group]
    optimize(
        fn=tokenize_shard,
        inputs=paths,
        output_dir=args.out,
        chunk_size=(common.SEQ_LEN + 1) * 1024,
        item_loader=TokensLoader(),
        num_workers=1,
    )
    common.report(shards=len(paths))


def one_pass(args) -> None:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    dataset = StreamingDataset(
        args.out, item_loader=TokensLoader(block_size=common.SEQ_LEN + 1), shuffle=False
    )
    first, rows = common.FirstBatch(), 0
    for batch in StreamingDataLoader(dataset, batch_size=8, num_workers=0):
        first.seen()
        rows += len(batch)
    common.report(sequences=rows, tokens=rows * (common.SEQ_LEN + 1), first_batch_epoch=first.epoch)


if __name__ == "__main__":
    common.convert_or_pass(__doc__, convert, one_pass)
