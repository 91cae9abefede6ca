"""Tokenization speed, side by side in one run: raw SentencePiece vs our DocumentPass vs HF `tokenizers`.

Measures, on the same documents (the sample corpus at ``--scale`` when its generator is available,
else real text files found in the installed Python packages):

  (a) raw SentencePiece ``encode_batch`` with 1 and 2 threads,
  (b) ``DocumentPass.process`` (filter + tokenize, packed mode, OpenELM defaults) with the same threads,
  (c) HF ``tokenizers`` built from the same model (no protobuf: vocabulary, scores and merges read
      through the SentencePiece API), its speed, and whether its ids are IDENTICAL document by document.

Throughput is input tokens per second (tokens of every document, as SentencePiece counts them), the
median of ``--repeats`` runs. Usage::

    ELM_DATA_TOKENIZER=/path/to/tokenizer.model python benchmarks/bench_tokenize.py --scale 20 --repeats 5
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF tokenizers' batch pool: 2 threads like (a)/(b)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from elm_data.pipeline.config import FilterConfig, SequenceConfig  # noqa: E402
from elm_data.pipeline.document_pass import DocumentPass  # noqa: E402
from elm_data.pipeline.tokenizer import LlamaTokenizer  # noqa: E402
from elm_data.sources.document import Document, Provenance, derived_doc_id  # noqa: E402


def sample_corpus_documents(scale: float) -> tuple[list[Document], str] | None:
    """Documents of the generated sample corpus, read through the project's own readers."""
    try:
        from elm_data.manifests.mixture import MixtureConfig
        from elm_data.sources.readers import read_shard
        from elm_data.sources.sample import write_sample_corpus
    except ImportError:
        return None
    out = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    mixture = MixtureConfig.load(write_sample_corpus(out, seed=0, scale=scale))
    docs = []
    for entry in mixture.entries:
        for uri in mixture.resolve_shards(entry):
            docs.extend(d for d in read_shard(uri, entry.source, entry.subset) if isinstance(d, Document))
    return docs, f"sample corpus, scale={scale}"


def package_text_documents(max_docs: int) -> tuple[list[Document], str]:
    """Fallback: real English text and code (whitespace runs included) from installed package files."""
    import site

    root = Path(site.getsitepackages()[0])
    paths = sorted(p for pattern in ("*.md", "*.rst", "*.txt", "*.py") for p in root.glob(f"*/{pattern}"))
    docs = []
    for i, path in enumerate(paths):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        prov = Provenance(
            "site-packages", path.suffix[1:], str(path), "0" * 64, i, derived_doc_id("0" * 64, i), None, ""
        )
        docs.append(Document(text=text, provenance=prov))
        if len(docs) >= max_docs:
            break
    return docs, f"{len(docs)} text/code files from {root}"


def hf_tokenizer_from_sentencepiece(sp):
    """A HF `tokenizers` BPE equivalent of the LLaMA SentencePiece model, built from the sp API only."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    mergeable = {
        piece: i
        for piece, i in vocab.items()
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
    }
    merges = []
    for piece, i in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append((-sp.get_score(i), i, mergeable[left], mergeable[right], left, right))
    merges.sort()
    bpe = models.BPE(
        vocab=vocab,
        merges=[(left, right) for *_, left, right in merges],
        unk_token="<unk>",
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


def median_rate(fn, tokens: int, repeats: int) -> tuple[float, float]:
    """Median tokens per wall-clock second and per CPU second (all threads) over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return tokens / statistics.median(walls), tokens / statistics.median(cpus)


def first_difference(a: list[int], b: list[int], sp) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    pieces = [[sp.id_to_piece(i) for i in ids[k : k + 4]] for ids in (a, b)]
    return f"at token {k}: sp {pieces[0]} vs hf {pieces[1]}; near {sp.decode(a[max(0, k - 4) : k + 4])!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default=None, help="LLaMA tokenizer.model (else $ELM_DATA_TOKENIZER)")
    parser.add_argument("--scale", type=float, default=20.0, help="sample corpus scale")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-docs", type=int, default=3000, help="fallback corpus size (files)")
    args = parser.parse_args(argv)

    tokenizer = LlamaTokenizer.resolve(args.tokenizer)
    loaded = sample_corpus_documents(args.scale) or package_text_documents(args.max_docs)
    docs, described = loaded
    texts = [d.text for d in docs]
    reference = tokenizer.encode_batch(texts, 2)
    total_tokens = sum(map(len, reference))
    print(
        f"corpus: {described}: {len(docs)} documents, {sum(map(len, texts)):,} chars, {total_tokens:,} tokens"
    )
    print(f"machine: {os.cpu_count()} CPUs (shared, loaded); median of {args.repeats} runs; input tokens/s")

    rates: dict[str, tuple[float, float]] = {}
    for threads in (1, 2):
        rates[f"sentencepiece encode_batch, {threads} thread(s)"] = median_rate(
            lambda t=threads: tokenizer.encode_batch(texts, t), total_tokens, args.repeats
        )
        rates[f"DocumentPass.process (filter+tokenize), {threads} thread(s)"] = median_rate(
            lambda t=threads: DocumentPass(
                FilterConfig(), SequenceConfig(), tokenizer, num_threads=t
            ).process(docs),
            total_tokens,
            args.repeats,
        )

    hf = hf_tokenizer_from_sentencepiece(tokenizer.sp)
    hf_ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    mismatched = [i for i, (a, b) in enumerate(zip(reference, hf_ids, strict=True)) if a != b]
    rates["HF tokenizers encode (loop), 1 thread"] = median_rate(
        lambda: [hf.encode(t, add_special_tokens=False) for t in texts], total_tokens, args.repeats
    )
    rates[f"HF tokenizers encode_batch, {os.environ['RAYON_NUM_THREADS']} threads"] = median_rate(
        lambda: hf.encode_batch(texts, add_special_tokens=False), total_tokens, args.repeats
    )

    base = rates["sentencepiece encode_batch, 1 thread(s)"][0]
    width = max(map(len, rates))
    for name, (rate, per_cpu) in rates.items():
        print(
            f"  {name:<{width}}  {rate:>11,.0f} tok/s  x{rate / base:.2f} vs sp 1 thread  "
            f"{per_cpu:>11,.0f} tok/CPU-s"
        )
    for threads in (1, 2):
        sp_rate = rates[f"sentencepiece encode_batch, {threads} thread(s)"][0]
        pass_rate = rates[f"DocumentPass.process (filter+tokenize), {threads} thread(s)"][0]
        print(f"DocumentPass / raw sentencepiece at {threads} thread(s): {pass_rate / sp_rate:.2f}")
    sp2 = rates["sentencepiece encode_batch, 2 thread(s)"][0]
    print(f"HF ids identical to SentencePiece: {len(docs) - len(mismatched)}/{len(docs)} documents")
    for i in mismatched[:5]:
        where = first_difference(reference[i], hf_ids[i], tokenizer.sp)
        print(f"  doc {i} ({docs[i].provenance.source}/{docs[i].provenance.subset}): {where}")
    identical = not mismatched
    faster = rates[f"HF tokenizers encode_batch, {os.environ['RAYON_NUM_THREADS']} threads"][0] > sp2
    verdict = "switch to HF tokenizers" if identical and faster else "keep SentencePiece"
    print(f"decision: {verdict} (identical ids: {identical}; HF faster at 2 threads: {faster})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
