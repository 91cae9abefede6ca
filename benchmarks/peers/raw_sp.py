"""Raw SentencePiece over the same texts: read every record's text (``json.loads`` per line), encode, count.

One thread (``num_threads=1``), 256 texts per ``encode`` call: the floor any tokenizing reader pays.
``startup_cpu_s`` is this process's CPU before the first text (interpreter, imports, model load), so the
runner can take the steady state (whole-process CPU minus it).

    python raw_sp.py --shards shards.json --tokenizer tokenizer.model
"""

from __future__ import annotations

import argparse
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sp = common.sentencepiece(args.tokenizer)
    startup = time.process_time()
    tokens = documents = 0
    batch: list[str] = []
    for paths in common.shards(args.shards).values():
        for text in common.texts(paths):
            batch.append(text)
            if len(batch) == 256:
                tokens += sum(map(len, sp.encode(batch, num_threads=args.threads)))
                documents += len(batch)
                batch.clear()
    if batch:
        tokens += sum(map(len, sp.encode(batch, num_threads=args.threads)))
        documents += len(batch)
    common.report(tokens=tokens, documents=documents, startup_cpu_s=startup)


if __name__ == "__main__":
    main()
