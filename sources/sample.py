"""A small sample corpus for every registered source/subset, in the exact format each publishes.

``write_sample_corpus(out_dir)`` writes two shards per subset with upstream-like folders and file
names, plus one original-Pile ``NN.jsonl.zst`` shard (read as ``pile/default`` by extension and
listed in the same mixture entry as the deduplicated parquet shards), and ``mixture.yaml``.
Output is byte-identical for a given seed and scale. Text is synthetic (see sample_text.py).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zstandard

from elm_data.core.canonical_json import SORTED_UTF8
from elm_data.core.errors import InvalidValue
from elm_data.core.outputs import atomic_path, write_atomic
from elm_data.sources import sample_text as st
from elm_data.sources.readers_parquet import EXPECTED_COLUMNS
from elm_data.sources.registry import PILE_SET_NAMES, get_subset, subset_key

ZSTD_LEVEL = 3
GZIP_LEVEL = 6
PARQUET_COMPRESSION = "snappy"
DOCS_PER_SHARD = 10  # at scale 1.0


# ---------------------------------------------------------------------------------------------- byte styles
def redpajama_line(record: dict[str, Any]) -> bytes:
    """RedPajama's JSON Lines style: json.dumps defaults (", " / ": ", ASCII escapes), insertion key order."""
    return (json.dumps(record) + "\n").encode("ascii")


def dolma_line(record: dict[str, Any]) -> bytes:
    """Dolma's style: sorted keys, compact separators, raw UTF-8 (the sample's bytes, so its shards'
    sha256s)."""
    return (SORTED_UTF8.dumps(record) + "\n").encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (mtime 0, no file name in the header)."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The ``huggingface`` schema metadata a Hub parquet export carries: the ``datasets`` features of
    ``schema``."""
    import datasets

    return {"info": {"features": datasets.Features.from_arrow_schema(schema).to_dict()}}


def write_parquet(path: Path, table: pa.Table, hf_metadata: bool = False) -> None:
    """Parquet with fixed writer options, several row groups, so the bytes depend only on the table.

    Nested lists use the legacy ``item`` naming of the pyarrow versions the hub exports were
    written with. Parquet stores timestamp[s] as milliseconds; with ``hf_metadata`` the
    ``huggingface`` schema metadata declares the published types (timestamp[s]), as hub exports do.
    """
    if hf_metadata:
        table = table.replace_schema_metadata({"huggingface": json.dumps(hf_features(table.schema))})
    rows_per_group = max(4, -(-table.num_rows // 3))
    pq.write_table(
        table,
        path,
        use_compliant_nested_type=False,
        row_group_size=rows_per_group,
        compression=PARQUET_COMPRESSION,
        use_dictionary=True,
        write_statistics=True,
        version="2.6",
    )


# ---------------------------------------------------------------------------------------------- lengths
def document_lengths(
    rng: random.Random, n: int, shard: int, boundary: tuple[int, int] = (140, 220)
) -> list[int | None]:
    """Word counts for ``n`` documents (None = a sub-200-character snippet).

    Every shard has a short one and one near the 256-token boundary; the first shard of each
    subset also a long one (>2048 words); the rest are mostly 300-3000 words. ``boundary`` is the
    word range that gives about 256 LLaMA tokens (fewer words for source code).
    """
    fixed: list[int | None] = [None, rng.randint(*boundary)]
    if shard == 0:
        fixed.append(rng.randint(2100, 2600))
    lengths = fixed[:n]
    while len(lengths) < n:
        roll = rng.random()
        if roll < 0.06:
            lengths.append(None)
        elif roll < 0.12:
            lengths.append(rng.randint(*boundary))
        elif roll < 0.15:
            lengths.append(rng.randint(2100, 2600))
        elif roll < 0.9:
            lengths.append(rng.randint(300, 1200))
        else:
            lengths.append(rng.randint(1200, 3000))
    rng.shuffle(lengths)
    return lengths


def _texts(rng: random.Random, n: int, shard: int, make: Callable[[random.Random, int], str]) -> list[str]:
    code = make is _code
    short = st.short_code if code else st.short_snippet
    lengths = document_lengths(rng, n, shard, boundary=(80, 125) if code else (140, 220))
    return [short(rng) if w is None else make(rng, w) for w in lengths]


def _code(rng: random.Random, words: int) -> str:
    return st.source_code(rng, words)


def _hex(seed: int, *parts: Any, n: int = 16) -> str:
    return hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()[:n]


def _stamp(rng: random.Random, start_year: int = 2014, end_year: int = 2023) -> dt.datetime:
    start = dt.datetime(start_year, 1, 1)
    span = int((dt.datetime(end_year, 12, 31) - start).total_seconds())
    return start + dt.timedelta(seconds=rng.randrange(span))


# ------------------------------------------------------------------------------------------ refinedweb / pile
def _refinedweb(rng: random.Random, n: int, shard: int, seed: int) -> tuple[str, bytes | pa.Table]:
    texts = _texts(rng, n, shard, st.web_page)
    dumps = ("CC-MAIN-2019-30", "CC-MAIN-2020-45", "CC-MAIN-2021-49", "CC-MAIN-2022-33", "CC-MAIN-2023-06")
    stamps = [_stamp(rng, 2019, 2023).replace(microsecond=0) for _ in texts]
    table = pa.table(
        {
            "content": texts,
            "url": [st.url(rng) for _ in texts],
            "timestamp": stamps,
            "dump": [rng.choice(dumps) for _ in texts],
            "segment": [f"{rng.randrange(10**12, 10**13)}.{rng.randint(10, 99)}" for _ in texts],
            "image_urls": [
                [
                    [f"https://img.{rng.choice(st.DOMAINS)}/{rng.choice(st.NOUNS)}.jpg", st.title(rng, 3)]
                    for _ in range(rng.choice((0, 0, 1, 2)))
                ]
                for _ in texts
            ],
        },
        schema=EXPECTED_COLUMNS["refinedweb/default"],
    )
    return f"refinedweb/data/train-{shard:05d}-of-05534-{_hex(seed, 'refinedweb', shard)}.parquet", table


def _pile_dedup(rng: random.Random, n: int, shard: int, seed: int) -> tuple[str, bytes | pa.Table]:
    table = pa.table({"text": _texts(rng, n, shard, st.mixed)}, schema=EXPECTED_COLUMNS["pile/default"])
    name = f"train-{shard:05d}-of-01650-{_hex(seed, 'pile', shard)}.parquet"
    return f"pile/the_pile_deduplicated/data/{name}", table


_PILE_STYLE = {
    "ArXiv": st.latex_paper,
    "Github": st.source_code,
    "StackExchange": st.qa_thread,
    "Wikipedia (en)": st.wiki_article,
    "Books3": st.book_chapter,
    "Gutenberg (PG-19)": st.book_chapter,
    "BookCorpus2": st.book_chapter,
    "PubMed Abstracts": st.paper_abstract,
    "PubMed Central": st.paper_abstract,
    "PhilPapers": st.paper_abstract,
    "NIH ExPorter": st.paper_abstract,
    "HackerNews": st.reddit_thread,
    "Ubuntu IRC": st.reddit_thread,
}


def _pile_original(rng: random.Random, n: int, shard: int, seed: int) -> tuple[str, bytes | pa.Table]:
    lines = []
    for words in document_lengths(rng, n, shard):
        set_name = rng.choice(PILE_SET_NAMES)
        make = _PILE_STYLE.get(set_name, st.web_page)
        text = st.short_snippet(rng) if words is None else make(rng, words)
        lines.append(redpajama_line({"text": text, "meta": {"pile_set_name": set_name}}))
    return f"pile/original/train/{shard:02d}.jsonl.zst", zstd_bytes(b"".join(lines))


# ---------------------------------------------------------------------------------------------- redpajama
def _rp_arxiv(rng: random.Random, text: str, i: int) -> dict[str, Any]:
    when = _stamp(rng, 2007, 2023)
    number = f"{rng.randrange(100000):05d}" if when.year >= 2015 else f"{rng.randrange(10000):04d}"
    arxiv_id = f"{when:%y%m}.{number}"
    meta = {
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S"),
        "yymm": f"{when:%y%m}",
        "arxiv_id": arxiv_id,
        "language": "en",
        "url": f"https://arxiv.org/abs/{arxiv_id}",
        "source": "arxiv",
    }
    return {"text": text, "meta": meta}


def _rp_c4(rng: random.Random, text: str, i: int) -> dict[str, Any]:
    when = _stamp(rng, 2019, 2019)
    meta = {"timestamp": f"{when:%Y-%m-%dT%H:%M:%SZ}", "url": st.url(rng), "language": "en", "source": "c4"}
    return {"text": text, "meta": meta}


def _rp_github(rng: random.Random, text: str, i: int) -> dict[str, Any]:
    lines = text.split("\n")
    lengths = [len(line) for line in lines]
    repo = f"{rng.choice(st.NAMES).split()[1].lower()}/{rng.choice(st.NOUNS)}-{rng.choice(st.NOUNS)}"
    language = next(k for k, (_, _, head) in st.LANGUAGES.items() if text.startswith(head))
    path = f"src/{rng.choice(st.NOUNS)}/{rng.choice(st.NOUNS)}{st.LANGUAGES[language][0]}"
    meta = {
        "content_hash": hashlib.md5(text.encode()).hexdigest(),
        "timestamp": "",
        "source": "github",
        "line_count": len(lines),
        "max_line_length": max(lengths),
        "avg_line_length": sum(lengths) / len(lengths),
        "alnum_prop": sum(c.isalnum() for c in text) / len(text),
        "repo_name": repo,
        "ref": "refs/heads/master",
        "path": path,
        "mode": "100644",
        "id": hashlib.sha1(f"{repo}/{path}".encode()).hexdigest(),
        "size": len(text.encode()),
        "binary": False,
        "copies": rng.randint(1, 5),
        "license": rng.choice(("mit", "apache-2.0", "bsd-3-clause", "bsd-2-clause")),
        "language": language,
    }
    return {"text": text, "meta": meta}


def _rp_wikipedia(rng: random.Random, text: str, i: int) -> dict[str, Any]:
    name = text.split("\n", 1)[0]
    meta = {
        "title": name,
        "url": f"https://en.wikipedia.org/wiki/{name.replace(' ', '_')}",
        "language": "en",
        "timestamp": "20230320",
    }
    return {"text": text, "meta": meta}


def _rp_stackexchange(rng: random.Random, text: str, i: int) -> dict[str, Any]:
    site = rng.choice(
        ("stackoverflow.com", "math.stackexchange.com", "physics.stackexchange.com", "superuser.com")
    )
    meta = {
        "language": "en",
        "url": f"https://{site}/questions/{rng.randrange(10**5, 10**8)}",
        "timestamp": f"{_stamp(rng, 2023, 2023):%Y-%m-%d}",
        "source": "stackexchange",
        "question_score": str(rng.randint(-2, 250)),
    }
    return {"text": text, "meta": meta}


def _rp_book(rng: random.Random, text: str, i: int) -> dict[str, Any]:
    if rng.random() < 0.6:  # PG-19 style
        meta: dict[str, Any] = {
            "short_book_title": st.title(rng, 3),
            "publication_date": rng.randint(1820, 1925),
            "url": f"http://www.gutenberg.org/ebooks/{rng.randrange(1000, 60000)}",
        }
    else:  # Books3 style
        meta = {"title": f"{st.title(rng, 3)}.epub.txt"}
    return {"meta": meta, "text": text}  # RedPajama's book subset writes meta before text


def _redpajama(
    subset: str,
    make_text: Callable[[random.Random, int], str],
    make_record: Callable[[random.Random, str, int], dict[str, Any]],
    file_name: Callable[[int, int], str],
):
    def write(rng: random.Random, n: int, shard: int, seed: int) -> tuple[str, bytes | pa.Table]:
        lines = [
            redpajama_line(make_record(rng, t, i)) for i, t in enumerate(_texts(rng, n, shard, make_text))
        ]
        return f"redpajama/{subset}/{file_name(shard, seed)}", b"".join(lines)

    return write


def _single_file(stem: str) -> Callable[[int, int], str]:
    """Upstream publishes one file; the sample's second shard continues it as ``<stem>-00001.jsonl``."""
    return lambda shard, seed: f"{stem}.jsonl" if shard == 0 else f"{stem}-{shard:05d}.jsonl"


def _arxiv_name(shard: int, seed: int) -> str:
    h = _hex(seed, "arxiv", shard, n=32)
    return f"arxiv_{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}.jsonl"


# ---------------------------------------------------------------------------------------------- dolma
def _dolma_metadata(
    subset: str, rng: random.Random, text: str, file_name: str, line: int
) -> tuple[str, dict]:
    if subset == "stack":
        language = next(k for k, (_, _, head) in st.LANGUAGES.items() if text.startswith(head))
        repo = f"{rng.choice(st.NAMES).split()[0].lower()}/{rng.choice(st.NOUNS)}"
        return "stack-dedup", {
            "alphanum_fraction": round(sum(c.isalnum() for c in text) / len(text), 6),
            "avg_line_length": round(len(text) / max(text.count("\n"), 1), 6),
            "ext": st.LANGUAGES[language][0].lstrip("."),
            "lang": language,
            "max_line_length": max(len(x) for x in text.split("\n")),
            "max_stars_repo_licenses": [rng.choice(("MIT", "Apache-2.0", "BSD-3-Clause"))],
            "max_stars_repo_name": repo,
            "max_stars_repo_path": f"src/{rng.choice(st.NOUNS)}{st.LANGUAGES[language][0]}",
            "size": len(text.encode()),
        }
    if subset == "reddit":
        return "reddit", {
            "subreddit": rng.choice(st.SUBREDDITS),
            "thread_id": _hex(rng.random(), n=6),
            "score": rng.randint(1, 900),
        }
    if subset == "pes2o":
        return "s2", {
            "s2fieldsofstudy": sorted(rng.sample(st.FIELDS, rng.randint(1, 2))),
            "sha1": hashlib.sha1(text.encode()).hexdigest(),
            "year": rng.randint(1995, 2023),
        }
    if subset == "gutenberg":
        return "gutenberg", {"author": rng.choice(st.NAMES), "title": st.title(rng, 3), "language": "en"}
    return "wikipedia", {  # wiki
        "length": len(text),
        "provenance": f"{file_name}:{line + 1}",
        "revid": str(rng.randrange(10**6, 10**8)),
        "url": f"https://en.wikipedia.org/wiki?curid={rng.randrange(1, 10**7)}",
    }


_DOLMA = {
    "stack": ("stack/stack-{:04d}.json.gz", _code),
    "reddit": ("reddit/reddit-{:04d}.json.gz", st.reddit_thread),
    "pes2o": ("pes2o/pes2o-{:04d}.json.gz", st.paper_abstract),
    "gutenberg": ("books/books-{:04d}.json.gz", st.book_chapter),
    "wiki": ("wiki/en_simple_wiki_v0-{:04d}.json.gz", lambda r, w: st.wiki_article(r, w, headings=False)),
}


def _dolma(subset: str):
    pattern, make_text = _DOLMA[subset]

    def write(rng: random.Random, n: int, shard: int, seed: int) -> tuple[str, bytes | pa.Table]:
        rel = f"dolma/v1_6/{pattern.format(shard)}"
        file_name = rel.rsplit("/", 1)[1]
        lines = []
        for i, text in enumerate(_texts(rng, n, shard, make_text)):
            source, metadata = _dolma_metadata(subset, rng, text, file_name, i)
            added = _stamp(rng, 2023, 2023)
            record = {
                "added": f"{added:%Y-%m-%dT%H:%M:%S}.{rng.randrange(1000):03d}Z",
                "created": f"{_stamp(rng, 2010, 2022):%Y-%m-%dT%H:%M:%S}.000Z",
                "id": _hex(seed, subset, shard, i, n=24)
                if subset != "wiki"
                else str(rng.randrange(1, 10**7)),
                "metadata": metadata,
                "source": source,
                "text": text,
                "version": "v0",
            }
            lines.append(dolma_line(record))
        return rel, gzip_bytes(b"".join(lines))

    return write


# ---------------------------------------------------------------------------------------------- the corpus
ShardWriter = Callable[[random.Random, int, int, int], tuple[str, "bytes | pa.Table"]]

# (source, subset, shard count, writer, mixture globs)
_PLAN: tuple[tuple[str, str, int, ShardWriter, tuple[str, ...]], ...] = (
    ("refinedweb", "default", 2, _refinedweb, ("refinedweb/data/*.parquet",)),
    (
        "redpajama",
        "arxiv",
        2,
        _redpajama("arxiv", st.latex_paper, _rp_arxiv, _arxiv_name),
        ("redpajama/arxiv/*.jsonl",),
    ),
    (
        "redpajama",
        "book",
        2,
        _redpajama("book", st.book_chapter, _rp_book, _single_file("book")),
        ("redpajama/book/*.jsonl",),
    ),
    (
        "redpajama",
        "c4",
        2,
        _redpajama("c4", st.web_page, _rp_c4, lambda s, _: f"c4-train.{s:05d}-of-01024.jsonl"),
        ("redpajama/c4/*.jsonl",),
    ),
    (
        "redpajama",
        "github",
        2,
        _redpajama(
            "github",
            _code,
            _rp_github,
            lambda s, seed: f"filtered_{_hex(seed, 'github', s, n=32)}.sampled.jsonl",
        ),
        ("redpajama/github/*.jsonl",),
    ),
    (
        "redpajama",
        "stackexchange",
        2,
        _redpajama("stackexchange", st.qa_thread, _rp_stackexchange, _single_file("stackexchange")),
        ("redpajama/stackexchange/*.jsonl",),
    ),
    (
        "redpajama",
        "wikipedia",
        2,
        _redpajama("wikipedia", st.wiki_article, _rp_wikipedia, _single_file("wiki")),
        ("redpajama/wikipedia/*.jsonl",),
    ),
    (
        "pile",
        "default",
        2,
        _pile_dedup,
        ("pile/the_pile_deduplicated/data/*.parquet", "pile/original/train/*.jsonl.zst"),
    ),
    ("pile", "default", 1, _pile_original, ()),
    ("dolma", "stack", 2, _dolma("stack"), ("dolma/v1_6/stack/*.json.gz",)),
    ("dolma", "reddit", 2, _dolma("reddit"), ("dolma/v1_6/reddit/*.json.gz",)),
    ("dolma", "pes2o", 2, _dolma("pes2o"), ("dolma/v1_6/pes2o/*.json.gz",)),
    ("dolma", "gutenberg", 2, _dolma("gutenberg"), ("dolma/v1_6/books/*.json.gz",)),
    ("dolma", "wiki", 2, _dolma("wiki"), ("dolma/v1_6/wiki/*.json.gz",)),
)


@dataclass
class SampleCorpus:
    """What ``generate_sample_corpus`` wrote: files (relative paths) and documents per source/subset."""

    root: Path
    mixture: Path
    files: list[str] = field(default_factory=list)
    documents: dict[str, int] = field(default_factory=dict)


def generate_sample_corpus(
    out_dir: str | Path,
    seed: int = 0,
    scale: float = 1.0,
    shard_factor: int = 1,
    heldout_fraction: float = 0.0,
) -> SampleCorpus:
    """Write the sample corpus and ``mixture.yaml`` under ``out_dir``; return what was written.

    ``scale`` multiplies the documents per shard, ``shard_factor`` the shards per subset. Each file is written
    whole (``core.outputs``), ``mixture.yaml`` last: a corpus whose writer was killed has no mixture. Other
    files in ``out_dir`` stay (it may be any folder, so it is added to, never replaced).
    ``heldout_fraction`` > 0 adds ``heldout: {fraction: ...}`` to the mixture (the demo's: held-out documents
    for per-source evaluation).
    """
    if scale <= 0:
        raise InvalidValue(f"scale must be positive, got {scale}")
    if shard_factor < 1:
        raise InvalidValue(f"shard_factor must be at least 1, got {shard_factor}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    per_shard = max(4, round(DOCS_PER_SHARD * scale))
    corpus = SampleCorpus(root=root, mixture=root / "mixture.yaml")
    entries = []
    for source, subset, shards, writer, globs in _PLAN:
        key = subset_key(source, subset)
        for shard in range(shards * shard_factor):
            rng = random.Random(f"{seed}:{key}:{writer.__name__}:{shard}")
            rel, payload = writer(rng, per_shard, shard, seed)
            if isinstance(payload, pa.Table):
                with atomic_path(root / rel) as tmp:
                    write_parquet(tmp, payload, hf_metadata=True)
            else:
                write_atomic(root / rel, payload)
            corpus.files.append(rel)
            corpus.documents[key] = corpus.documents.get(key, 0) + per_shard
        if globs:
            weight = get_subset(source, subset).openelm_weight
            entries.append({"source": source, "subset": subset, "weight": weight, "shards": list(globs)})
    mixture = {
        "name": "openelm-sample",
        "synthetic": True,
        "seed": seed,
        "tokenizer": None,
        "targets": "openelm",
        "filters": {"min_characters": 200, "min_tokens": 256},
        "sequences": {"mode": "packed", "seq_len": 2048},
        **({"heldout": {"fraction": heldout_fraction}} if heldout_fraction else {}),
        "sources": entries,
    }
    header = (
        "# elm-data sample mixture: synthetic text in each corpus' native format (synthetic: true makes "
        "every\n"
        "# record say so: no shard is linked to a real upstream file).\n"
        "# weight = OpenELM's target tokens for the subset, in billions (arXiv 2404.14619).\n"
        "# pile/default lists both the deduplicated parquet shards and an original-Pile .jsonl.zst shard.\n"
    )
    write_atomic(corpus.mixture, header + yaml.safe_dump(mixture, sort_keys=False, width=120))
    return corpus


def write_sample_corpus(
    out_dir: str | Path,
    seed: int = 0,
    scale: float = 1.0,
    shard_factor: int = 1,
    heldout_fraction: float = 0.0,
) -> Path:
    """Write a small corpus for every source/subset in its native format; return the path of
    ``mixture.yaml``."""
    return generate_sample_corpus(out_dir, seed, scale, shard_factor, heldout_fraction).mixture
