"""A declarative registry of the public corpora OpenELM was pretrained on, one entry per source/subset.

Each :class:`SubsetSpec` says how a subset is published (format, upstream repository and file
naming), which field holds the text and which the native id, under which licence, and how many
tokens OpenELM's pretraining mixture took from it (arXiv 2404.14619, Table 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from elm_data.core.errors import ElmDataError
from elm_data.core.settings import nearest

# Format names understood by elm_data.sources.readers.
FORMAT_PARQUET = "parquet"
FORMAT_JSONL = "jsonl"  # plain JSON Lines
FORMAT_JSONL_GZ = "jsonl.gz"  # gzip-compressed JSON Lines (Dolma's *.json.gz)
FORMAT_JSONL_ZST = "jsonl.zst"  # zstd-compressed JSON Lines (the original Pile)
FORMATS = (FORMAT_PARQUET, FORMAT_JSONL, FORMAT_JSONL_GZ, FORMAT_JSONL_ZST)

_B = 1_000_000_000


def subset_key(source: str, subset: str) -> str:
    """``"source/subset"``: how a subset is named in targets, mixtures, manifests, audits and logs (formed
    here)."""
    return f"{source}/{subset}"


# OpenELM's pretraining data (arXiv 2404.14619, Table 2), in tokens, keyed "source/subset".
OPENELM_TARGETS: dict[str, int] = {
    "refinedweb/default": 665 * _B,
    "redpajama/github": 59 * _B,
    "redpajama/book": 26 * _B,
    "redpajama/arxiv": 28 * _B,
    "redpajama/wikipedia": 24 * _B,
    "redpajama/stackexchange": 20 * _B,
    "redpajama/c4": 175 * _B,
    "pile/default": 207 * _B,
    "dolma/stack": 411 * _B,
    "dolma/reddit": 89 * _B,
    "dolma/pes2o": 70 * _B,
    "dolma/gutenberg": 6 * _B,
    "dolma/wiki": 4_300_000_000,
}


@dataclass(frozen=True)
class SubsetSpec:
    """How one subset of a public corpus is published and licensed.

    ``format`` is the reader format; ``alt_formats`` are further formats the same subset is
    published in, picked by file extension (e.g. the original Pile's ``.jsonl.zst``).
    ``id_field`` is a dotted path into the record (``meta.arxiv_id``), or None when the
    corpus publishes no id. ``licence_field`` names a per-record licence (RedPajama github).
    """

    source: str
    subset: str
    format: str
    licence: str
    upstream: str  # repository or base URL, e.g. hf://datasets/tiiuae/falcon-refinedweb
    file_pattern: str  # upstream file naming, relative to ``upstream``
    text_field: str
    id_field: str | None
    record_schema: str  # human-readable description of one record
    target_tokens: int
    alt_formats: tuple[tuple[str, str], ...] = ()  # (file suffix, format)
    licence_field: str | None = None
    notes: str = ""
    shard_glob: str | None = None  # where the upstream is a hub repo: its shards, relative to ``upstream``
    shard_list: str | None = None  # where the upstream publishes a URL list instead: that list's URL
    # the Hugging Face dataset id that documents the corpus (a model card's datasets:)
    hub_dataset: str | None = None

    @property
    def list_match(self) -> str:
        """The fnmatch pattern that picks this subset's URLs out of the upstream URL list."""
        return f"{self.upstream}/{self.file_pattern.split('/', 1)[0]}/*"

    def upstream_shards(self) -> dict[str, str | list[str]]:
        """Mixture-entry keys naming every upstream shard: ``shards`` (a hub glob) or ``shards_from`` +
        ``match``."""
        if self.shard_list:
            return {"shards_from": self.shard_list, "match": self.list_match}
        return {"shards": [f"{self.upstream}/{self.shard_glob}"]}

    @property
    def key(self) -> str:
        return subset_key(self.source, self.subset)

    @property
    def openelm_weight(self) -> float:
        """The subset's mixing weight in OpenELM's mix: its target tokens in billions (sample and `init`
        mixtures)."""
        return self.target_tokens / 1e9

    def upstream_uri(self, uri: str) -> str:
        """Where a shard named like ``uri`` lives upstream (the one place this is worked out).

        A shard read from the hub (``hf://``) is its own upstream; any other copy is placed by its file name
        in the registry's folder (the original Pile's ``NN.jsonl.zst`` in its own former home).
        """
        if uri.startswith("hf://"):
            return uri
        name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if self.source == "pile" and name.endswith(".jsonl.zst"):
            return f"{PILE_ORIGINAL_UPSTREAM}/{name}"
        folder = self.file_pattern.split(" ", 1)[0].rsplit("/", 1)
        return f"{self.upstream}/{folder[0]}/{name}" if len(folder) == 2 else f"{self.upstream}/{name}"

    def format_for(self, uri: str) -> str:
        """The reader format for a shard of this subset, from its file extension where ambiguous."""
        path = uri.split("?", 1)[0].lower()
        for suffix, fmt in self.alt_formats:
            if path.endswith(suffix):
                return fmt
        return self.format


# Where the original (non-deduplicated) Pile was published; offline since 2023.
PILE_ORIGINAL_UPSTREAM = "https://the-eye.eu/public/AI/pile/train"
_RP_BASE = "https://data.together.xyz/redpajama-data-1T/v1.0.0"
RP_URL_LIST = f"{_RP_BASE}/urls.txt"  # every subset's files, one URL a line (common_crawl included)
_RP_NOTE = f"file list: {RP_URL_LIST}"
_DOLMA_BASE = "https://olmo-data.org/dolma-v1_6"
DOLMA_URL_LIST = "hf://datasets/allenai/dolma/urls/v1_6.txt"  # every v1.6 file, one URL a line
_DOLMA_NOTE = f"file list: {DOLMA_URL_LIST}"
_DOLMA_LICENCE = "ODC-By-1.0 (released under AI2 ImpACT licence (MR-agreement) at the time of v1.6)"
_DOLMA_SCHEMA = (
    "one JSON object per line, sorted keys: added, created, id, metadata{...}, source, text, version"
)


def _redpajama(
    subset: str, pattern: str, licence: str, id_field: str | None, meta_keys: str, **kw
) -> SubsetSpec:
    return SubsetSpec(
        source="redpajama",
        subset=subset,
        format=FORMAT_JSONL,
        licence=licence,
        upstream=_RP_BASE,
        file_pattern=pattern,
        text_field="text",
        id_field=id_field,
        record_schema=f'{{"text": str, "meta": {{{meta_keys}}}}} (json.dumps defaults)',
        target_tokens=OPENELM_TARGETS[subset_key("redpajama", subset)],
        notes=_RP_NOTE,
        shard_list=RP_URL_LIST,
        hub_dataset="togethercomputer/RedPajama-Data-1T",
        **kw,
    )


def _dolma(subset: str, pattern: str, licence: str = _DOLMA_LICENCE) -> SubsetSpec:
    return SubsetSpec(
        source="dolma",
        subset=subset,
        format=FORMAT_JSONL_GZ,
        licence=licence,
        upstream=_DOLMA_BASE,
        file_pattern=pattern,
        text_field="text",
        id_field="id",
        record_schema=_DOLMA_SCHEMA,
        target_tokens=OPENELM_TARGETS[subset_key("dolma", subset)],
        notes=_DOLMA_NOTE,
        shard_list=DOLMA_URL_LIST,
        hub_dataset="allenai/dolma",
    )


_SPECS: tuple[SubsetSpec, ...] = (
    SubsetSpec(
        source="refinedweb",
        subset="default",
        format=FORMAT_PARQUET,
        licence="ODC-By-1.0 (plus Common Crawl terms of use)",
        upstream="hf://datasets/tiiuae/falcon-refinedweb",
        file_pattern="data/train-NNNNN-of-05534-<16hex>.parquet",
        text_field="content",
        id_field=None,
        record_schema=(
            "content: string, url: string, timestamp: timestamp[s], dump: string, segment: string, "
            "image_urls: list<list<string>>"
        ),
        target_tokens=OPENELM_TARGETS["refinedweb/default"],
        shard_glob="data/train-*-of-05534-*.parquet",
        hub_dataset="tiiuae/falcon-refinedweb",
    ),
    _redpajama(
        "arxiv",
        "arxiv/arxiv_<uuid>.jsonl",
        "arXiv licence terms (per-paper licences; arXiv non-exclusive distribution licence)",
        "meta.arxiv_id",
        "timestamp, yymm, arxiv_id, language, url, source",
    ),
    _redpajama(
        "book",
        "book/book.jsonl",
        "as upstream: PG-19 public-domain books plus Books3 (copyright status disputed; withdrawn upstream)",
        None,
        "short_book_title, publication_date, url | title  (meta written before text)",
    ),
    _redpajama(
        "c4",
        "c4/c4-train.NNNNN-of-01024.jsonl",
        "ODC-By-1.0 (plus Common Crawl terms of use)",
        None,
        "timestamp, url, language, source",
    ),
    _redpajama(
        "github",
        "github/filtered_<32hex>.sampled.jsonl",
        "per-file licence in meta.license (MIT, BSD or Apache-2.0 only)",
        "meta.id",
        "content_hash, timestamp, source, line_count, max_line_length, avg_line_length, alnum_prop, "
        "repo_name, "
        "ref, path, mode, id, size, binary, copies, license, language",
        licence_field="meta.license",
    ),
    _redpajama(
        "stackexchange",
        "stackexchange/stackexchange.jsonl",
        "CC-BY-SA-4.0",
        None,
        "language, url, timestamp, source, question_score",
    ),
    _redpajama(
        "wikipedia",
        "wikipedia/wiki.jsonl",
        "CC-BY-SA-3.0 (and GFDL)",
        None,
        "title, url, language, timestamp",
    ),
    SubsetSpec(
        source="pile",
        subset="default",
        format=FORMAT_PARQUET,
        licence="MIT (the compilation); licences of the 22 component sets vary",
        upstream="hf://datasets/EleutherAI/the_pile_deduplicated",
        file_pattern="data/train-NNNNN-of-01650-<16hex>.parquet (original Pile: train/NN.jsonl.zst)",
        text_field="text",
        id_field=None,
        record_schema=(
            'deduplicated: text: string | original: {"text": str, "meta": {"pile_set_name": str}} (zstd JSON '
            "Lines)"
        ),
        target_tokens=OPENELM_TARGETS["pile/default"],
        alt_formats=((".jsonl.zst", FORMAT_JSONL_ZST), (".parquet", FORMAT_PARQUET)),
        notes="the original Pile (NN.jsonl.zst) is read as the same subset; format chosen by file extension",
        shard_glob="data/train-*-of-01650-*.parquet",
        hub_dataset="EleutherAI/the_pile_deduplicated",
    ),
    _dolma("stack", "stack/stack-NNNN.json.gz"),
    _dolma("reddit", "reddit/reddit-NNNN.json.gz"),
    _dolma("pes2o", "pes2o/pes2o-NNNN.json.gz"),
    _dolma("gutenberg", "books/books-NNNN.json.gz"),
    _dolma("wiki", "wiki/en_simple_wiki_v0-NNNN.json.gz"),
)

_BY_KEY: dict[tuple[str, str], SubsetSpec] = {(s.source, s.subset): s for s in _SPECS}

# The 22 component sets of the original Pile, as written in meta.pile_set_name.
PILE_SET_NAMES: tuple[str, ...] = (
    "Pile-CC",
    "PubMed Central",
    "Books3",
    "OpenWebText2",
    "ArXiv",
    "Github",
    "FreeLaw",
    "StackExchange",
    "USPTO Backgrounds",
    "PubMed Abstracts",
    "Gutenberg (PG-19)",
    "OpenSubtitles",
    "Wikipedia (en)",
    "DM Mathematics",
    "Ubuntu IRC",
    "BookCorpus2",
    "EuroParl",
    "HackerNews",
    "YoutubeSubtitles",
    "PhilPapers",
    "NIH ExPorter",
    "Enron Emails",
)


class UnknownSubset(ElmDataError, KeyError):
    """A source/subset the registry does not know (a mixture's or a flag's); the message lists the known
    ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_subset(source: str, subset: str = "default") -> SubsetSpec:
    """The spec of ``source/subset``; :class:`UnknownSubset` (a KeyError) names every known pair when
    unknown."""
    try:
        return _BY_KEY[(source, subset)]
    except KeyError:
        known = [s.key for s in _SPECS]
        guess = nearest(f"{source}/{subset!s}", known)
        hint = f"did you mean {guess!r}? " if guess else ""
        raise UnknownSubset(
            f"unknown source/subset {source}/{subset!s}; {hint}known: {', '.join(known)}"
        ) from None


def all_subsets() -> list[SubsetSpec]:
    """Every registered subset, in a stable order."""
    return list(_SPECS)
