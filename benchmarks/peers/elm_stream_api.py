"""Our stream through the Python API: one natural pass with N DataLoader workers (what ``stream --full-pass
--workers N`` does where the CLI has that option; the runner uses this script only where it does not).

As the CLI's full pass: natural weights, one epoch, no provenance spans; ``--batch-size`` sequences per batch.

    python elm_stream_api.py --manifest DIR --workers 2 --batch-size 8
"""

from __future__ import annotations

import argparse

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    stream = TokenStream(
        args.manifest, batch_size=args.batch_size, weights="natural", epochs=1, provenance=False
    )
    loader = StreamLoader(stream, num_workers=args.workers)
    first, rows = common.FirstBatch(), 0
    for batch in loader:
        first.seen()
        rows += len(batch["input_ids"])
    common.report(
        sequences=rows, tokens=sum(loader.consumed.to_dict().values()), first_batch_epoch=first.epoch
    )


if __name__ == "__main__":
    main()
