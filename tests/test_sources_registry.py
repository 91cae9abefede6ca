"""The sources registry: subsets, licences, upstream naming and OpenELM's target tokens."""

from __future__ import annotations

import pytest

from elm_data.sources.registry import (
    FORMATS,
    OPENELM_TARGETS,
    PILE_SET_NAMES,
    all_subsets,
    get_subset,
)

# OpenELM (arXiv 2404.14619), Table 2, in billions of tokens.
PAPER_TABLE_BILLIONS = {
    "refinedweb/default": 665,
    "redpajama/github": 59,
    "redpajama/book": 26,
    "redpajama/arxiv": 28,
    "redpajama/wikipedia": 24,
    "redpajama/stackexchange": 20,
    "redpajama/c4": 175,
    "pile/default": 207,
    "dolma/stack": 411,
    "dolma/reddit": 89,
    "dolma/pes2o": 70,
    "dolma/gutenberg": 6,
    "dolma/wiki": 4.3,
}


def test_targets_match_the_paper_in_tokens():
    assert set(OPENELM_TARGETS) == set(PAPER_TABLE_BILLIONS)
    for key, billions in PAPER_TABLE_BILLIONS.items():
        assert OPENELM_TARGETS[key] == round(billions * 1e9), key
        assert isinstance(OPENELM_TARGETS[key], int)
    # the paper's total is "approximately 1.8 trillion tokens"
    assert 1.75e12 < sum(OPENELM_TARGETS.values()) < 1.85e12


def test_every_subset_is_registered_once_with_its_target():
    specs = all_subsets()
    keys = [s.key for s in specs]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(OPENELM_TARGETS)
    for spec in specs:
        assert get_subset(spec.source, spec.subset) is spec
        assert spec.target_tokens == OPENELM_TARGETS[spec.key]
        assert spec.format in FORMATS
        assert spec.licence and spec.upstream and spec.file_pattern and spec.text_field and spec.record_schema


def test_unknown_subset_error_lists_known_names():
    with pytest.raises(KeyError) as err:
        get_subset("redpajama", "common_crawl")
    message = str(err.value)
    assert "redpajama/common_crawl" in message
    for key in ("redpajama/arxiv", "dolma/wiki", "refinedweb/default", "pile/default"):
        assert key in message


@pytest.mark.parametrize(
    ("key", "fmt", "text_field", "id_field", "upstream_part"),
    [
        ("refinedweb/default", "parquet", "content", None, "tiiuae/falcon-refinedweb"),
        ("redpajama/arxiv", "jsonl", "text", "meta.arxiv_id", "redpajama-data-1T"),
        ("redpajama/github", "jsonl", "text", "meta.id", "redpajama-data-1T"),
        ("pile/default", "parquet", "text", None, "EleutherAI/the_pile_deduplicated"),
        ("dolma/stack", "jsonl.gz", "text", "id", "dolma-v1_6"),
        ("dolma/wiki", "jsonl.gz", "text", "id", "dolma-v1_6"),
    ],
)
def test_formats_fields_and_upstream(key, fmt, text_field, id_field, upstream_part):
    spec = get_subset(*key.split("/"))
    assert (spec.format, spec.text_field, spec.id_field) == (fmt, text_field, id_field)
    assert upstream_part in spec.upstream


def test_licences_are_the_published_ones():
    assert get_subset("refinedweb", "default").licence.startswith("ODC-By-1.0")
    assert get_subset("redpajama", "c4").licence.startswith("ODC-By-1.0")
    assert get_subset("redpajama", "wikipedia").licence.startswith("CC-BY-SA-3.0")
    assert get_subset("redpajama", "stackexchange").licence.startswith("CC-BY-SA-4.0")
    assert "arXiv" in get_subset("redpajama", "arxiv").licence
    github = get_subset("redpajama", "github")
    assert github.licence_field == "meta.license" and "MIT" in github.licence
    assert get_subset("pile", "default").licence.startswith("MIT")
    for subset in ("stack", "reddit", "pes2o", "gutenberg", "wiki"):
        assert "ODC-By-1.0" in get_subset("dolma", subset).licence


def test_pile_format_follows_the_file_extension():
    pile = get_subset("pile", "default")
    assert pile.format_for(
        "hf://datasets/EleutherAI/the_pile_deduplicated/data/train-00000-of-01650-x.parquet"
    ) == ("parquet")
    assert pile.format_for("/data/pile/train/00.jsonl.zst") == "jsonl.zst"
    assert pile.format_for("s3://bucket/pile/00.JSONL.ZST?versionId=3") == "jsonl.zst"
    # other subsets have one format whatever the name
    assert get_subset("redpajama", "book").format_for("book.jsonl.zst") == "jsonl"


def test_upstream_uri_joins_the_registry_folder_and_the_file_name():
    rw = get_subset("refinedweb", "default")
    name = "train-00007-of-05534-0123456789abcdef.parquet"
    assert rw.upstream_uri(f"/tmp/x/{name}") == f"hf://datasets/tiiuae/falcon-refinedweb/data/{name}"
    assert (
        get_subset("dolma", "reddit")
        .upstream_uri("memory://r/reddit-0003.json.gz")
        .endswith("dolma-v1_6/reddit/reddit-0003.json.gz")
    )
    assert get_subset("pile", "default").upstream_uri("/p/00.jsonl.zst").endswith("/pile/train/00.jsonl.zst")


def test_pile_has_its_22_set_names():
    assert len(PILE_SET_NAMES) == len(set(PILE_SET_NAMES)) == 22
    assert {"Pile-CC", "Books3", "Enron Emails", "Gutenberg (PG-19)", "Wikipedia (en)"} <= set(PILE_SET_NAMES)


def test_package_exports_the_entry_points():
    import elm_data.sources as sources
    from elm_data.sources import readers, registry, sample

    assert sources.read_shard is readers.read_shard and sources.sha256_of is readers.sha256_of
    assert sources.get_subset is registry.get_subset and sources.OPENELM_TARGETS is registry.OPENELM_TARGETS
    assert sources.write_sample_corpus is sample.write_sample_corpus
    with pytest.raises(AttributeError):
        sources.no_such_thing  # noqa: B018
