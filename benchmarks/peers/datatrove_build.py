"""datatrove's counting pipeline: JsonlReader -> the same character rule -> TokensCounter, N local tasks.

The peer of ``elm-data build manifest``: read every record, keep those the OpenELM character rule keeps, count
their LLaMA tokens. TokensCounter needs a ``tokenizer.json``: the runner converts the SentencePiece model
(``bench_tokenize.hf_tokenizer_from_sentencepiece``, ids identical on every sample document), and HF
``tokenizers`` encodes each batch on all cores (rayon). ``--workers N`` runs N tasks on N worker processes
(``LocalPipelineExecutor(tasks=N, workers=N)``; the 12 shards are dealt to the tasks by datatrove).

    python datatrove_build.py --shards shards.json --tokenizer-json tokenizer.json --workers 2 --logs DIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import common


def linked_folder(shard_map: dict[str, list[str]], folder: Path) -> Path:
    """One folder holding a link to every shard (subset-prefixed names), for JsonlReader's glob."""
    folder.mkdir(parents=True, exist_ok=True)
    for subset, paths in shard_map.items():
        for path in paths:
            link = folder / f"{subset}__{Path(path).name}"
            if not link.exists():
                os.symlink(os.path.abspath(path), link)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--tokenizer-json", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--logs", required=True, help="datatrove's logging folder (fresh per run)")
    args = parser.parse_args()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import TokensCounter

    folder = linked_folder(common.shards(args.shards), Path(args.logs) / "shards")
    executor = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(folder), glob_pattern="*.jsonl"),
            LambdaFilter(lambda doc: common.passes_character_rule(doc.text)),
            TokensCounter(tokenizer_name_or_path=args.tokenizer_json, count_eos_token=False),
        ],
        tasks=args.workers,
        workers=args.workers,
        logging_dir=str(Path(args.logs) / "logs"),
        skip_completed=False,
    )
    executor.run()
    stats = json.loads((Path(args.logs) / "logs" / "stats.json").read_text())
    tokens = next((s["stats"]["tokens"]["total"] for s in stats if "tokens" in s.get("stats", {})), None)
    common.report(tokens=tokens)


if __name__ == "__main__":
    main()
