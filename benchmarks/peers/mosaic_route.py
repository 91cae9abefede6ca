"""mosaicml-streaming, the pre-tokenized route: ``convert`` (MDSWriter) once, then ``pass``
(StreamingDataset).

``convert``: read every record, keep what the OpenELM rule keeps (the same characters + tokens rule as our
build), frame BOS + ids + EOS, concatenate and cut rows of 2049 tokens, written as ``ndarray:uint16`` samples
in uncompressed MDS shards (llm-foundry's concat-tokens recipe, 2-byte ids). ``pass``: one natural pass,
``StreamingDataset(local=..., shuffle=False)`` through a torch ``DataLoader`` (batch 8, no workers).

    python mosaic_route.py convert --shards shards.json --tokenizer tokenizer.model --out DIR
    python mosaic_route.py pass --out DIR
"""

from __future__ import annotations

import common


def convert(args) -> None:
    import numpy as np
    from streaming import MDSWriter

    sp, rows = common.sentencepiece(args.tokenizer), 0
    columns = {"tokens": f"ndarray:uint16:{common.SEQ_LEN + 1}"}
    with MDSWriter(out=args.out, columns=columns, compression=None) as writer:
        paths = [p for group in common.shards(args.shards).values() for p in group]
        for row in common.packed_rows(paths, sp):
            writer.write({"tokens": np.asarray(row, dtype=np.uint16)})
            rows += 1
    common.report(sequences=rows, tokens=rows * (common.SEQ_LEN + 1))


def one_pass(args) -> None:
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    dataset = StreamingDataset(local=args.out, shuffle=False, batch_size=8)
    first, rows = common.FirstBatch(), 0
    for batch in DataLoader(dataset, batch_size=8, num_workers=0):
        first.seen()
        rows += len(batch["tokens"])
    common.report(sequences=rows, tokens=rows * (common.SEQ_LEN + 1), first_batch_epoch=first.epoch)


if __name__ == "__main__":
    common.convert_or_pass(__doc__, convert, one_pass)
