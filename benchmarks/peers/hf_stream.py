"""Hugging Face ``datasets`` streaming: ``load_dataset("json", streaming=True)`` per subset, batched
SentencePiece map.

What a user writes for an on-the-fly tokenized pass: each subset's JSONL shards streamed, ``.map`` with
``batched=True`` (its default 1,000 examples per call) calling ``sp.encode(batch["text"])`` (SentencePiece's
default threads: all cores), every example iterated once. No filtering, packing, hashing or provenance.

    python hf_stream.py --shards shards.json --tokenizer tokenizer.model
"""

from __future__ import annotations

import argparse

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--tokenizer", required=True)
    args = parser.parse_args()
    from datasets import load_dataset

    sp = common.sentencepiece(args.tokenizer)

    def tokenize(batch):
        return {"input_ids": sp.encode(batch["text"])}

    first, tokens, examples = common.FirstBatch(), 0, 0
    for paths in common.shards(args.shards).values():
        ds = load_dataset("json", data_files=paths, split="train", streaming=True)
        for example in ds.map(tokenize, batched=True, remove_columns=list(ds.column_names or [])):
            first.seen()
            tokens += len(example["input_ids"])
            examples += 1
    common.report(tokens=tokens, documents=examples, first_batch_epoch=first.epoch)


if __name__ == "__main__":
    main()
