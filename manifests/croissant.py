"""Export a manifest as Croissant 1.1 JSON-LD (with the Responsible-AI fields that apply).

The distribution lists the manifest's own files and every corpus shard as a ``cr:FileObject`` with
its sha256, size and licence, its location (a URL without credentials, or a local path relative to the
JSON-LD: never an absolute local path), ``prov:wasDerivedFrom`` its upstream location (none for the
synthetic sample, whose description and RAI fields say it is generated text), and each shard's documents
ledger (``documents/NNNNNN.parquet``) with its sha256. A record set describes ``shards.parquet`` column by
column, so Croissant tools can load the shard table. Reads only the manifest directory, and refuses one whose
documents ledger does not match its digests and counts (``Manifest.check_ledgers``).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from elm_data.core.known_tokenizers import known_name, token_unit
from elm_data.core.outputs import write_atomic
from elm_data.core.redact import redact_uri
from elm_data.sources.registry import FORMAT_JSONL, FORMAT_JSONL_GZ, FORMAT_JSONL_ZST, FORMAT_PARQUET

from .audit_store import KINDS, audit_lines, filter_lines, mix_summary
from .manifest import BLOCKS_FILE, MANIFEST_FILE, SHARDS_FILE, Manifest, ledger_path
from .shard_records import SHARD_SCHEMA, ShardRecord

CROISSANT_1_1 = "http://mlcommons.org/croissant/1.1"
CROISSANT_FILE = "croissant.json"  # where `elm-data export croissant DIR` writes by default, inside DIR
PROV_NS = "http://www.w3.org/ns/prov#"
OPENELM_CITATION = (
    "@misc{mehta2024openelm, title={OpenELM: An Efficient Language Model Family with Open Training "
    "and Inference Framework}, author={Mehta, Sachin and others}, year={2024}, eprint={2404.14619}}"
)

# JSON-LD @context of Croissant 1.1 (as mlcroissant writes it), plus the RAI and PROV namespaces.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "prov": PROV_NS,
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "sc": "https://schema.org/",
    "samplingRate": "cr:samplingRate",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

_DATA_TYPES = {
    pa.string(): "sc:Text",
    pa.int32(): "sc:Integer",
    pa.int64(): "sc:Integer",
}

_FIELD_DESCRIPTIONS = {
    "shards": {
        "shard": "Position of the shard in the manifest (0-based).",
        "uri": "Where the shard was read from when the manifest was built.",
        "sha256": "SHA-256 of the shard's bytes.",
        "upstream": "Upstream location the shard derives from.",
        "upstream_revision": "Upstream commit/etag when known.",
        "docs_read": "Input records read (= kept + held out + filtered + rejected).",
        "docs_heldout": "Documents the filters keep, held out of training for evaluation (status heldout).",
        "heldout_tokens": "Tokens of held-out documents (not in tokens; no BOS/EOS).",
        "filtered_by_reason": "JSON object: filtered documents per filter reason.",
        "rejected_by_reason": "JSON object: rejected records per rejection reason.",
        "pieces_filtered_by_reason": "JSON object: CoreNet pieces dropped per filter reason (corenet mode).",
        "chars": "Characters of kept documents.",
        "tokens": (
            "Tokens of kept documents under the manifest's tokenizer (named in the description; no BOS/EOS)."
        ),
        "format": "Reader format found from the shard's bytes (parquet, jsonl, jsonl.gz, jsonl.zst).",
        "blocks_sha256": "SHA-256 of the shard's block index in blocks.parquet (canonical JSON).",
        "block_counts_sha256": "SHA-256 of the shard's block counts in blocks.parquet (int64 rows).",
    },
}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The media type of each reader format (the format the build found from the shard's bytes).
_ENCODINGS = {
    FORMAT_PARQUET: "application/x-parquet",
    FORMAT_JSONL: "application/jsonlines",
    FORMAT_JSONL_GZ: "application/jsonlines",
    FORMAT_JSONL_ZST: "application/jsonlines",
}


def _record_set(name: str, file_id: str, schema: pa.Schema, description: str) -> dict[str, Any]:
    fields = []
    for column in schema:
        field: dict[str, Any] = {
            "@type": "cr:Field",
            "@id": f"{name}/{column.name}",
            "name": column.name,
            "dataType": _DATA_TYPES[column.type],
            "source": {"fileObject": {"@id": file_id}, "extract": {"column": column.name}},
        }
        if column.name in _FIELD_DESCRIPTIONS[name]:
            field["description"] = _FIELD_DESCRIPTIONS[name][column.name]
        fields.append(field)
    return {"@type": "cr:RecordSet", "@id": name, "name": name, "description": description, "field": fields}


def croissant_metadata(manifest_dir: str | Path, relative_to: str | Path | None = None) -> dict[str, Any]:
    """The Croissant 1.1 JSON-LD object describing the manifest at ``manifest_dir``.

    The manifest's own files are referenced relative to ``relative_to`` (the folder the JSON-LD will
    live in; default: the manifest directory).
    """
    manifest = Manifest(manifest_dir, every_block=True)  # describes every block: checks every one
    manifest.check_ledgers()  # each ledger file's sha256 is published: it must be the ledger the id covers
    base = Path(relative_to) if relative_to is not None else manifest.path
    info, records = manifest.info, manifest.shards
    summary = mix_summary(manifest)  # the dedup filter's counts and the audits bound to this manifest
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CROISSANT_1_1,
        "name": info["name"],
        "description": _dataset_description(manifest),
        "identifier": f"elm-data:manifest:{manifest.manifest_id}",
        "version": "1.0.0",
        "datePublished": _export_date(),
        "license": sorted({r.licence for r in records if r.licence}),
        "keywords": [
            "language modeling",
            "pretraining",
            "OpenELM",
            "data provenance",
            *_source_keys(records),
            *(["synthetic data"] if manifest.synthetic else []),
        ],
        "citeAs": OPENELM_CITATION,
        "creator": {"@type": "sc:Organization", "name": "elm-data"},
        **_responsible_ai(info, records, summary),
        **(_synthetic_rai() if manifest.synthetic else {}),
        "prov:wasGeneratedBy": {
            "@type": "prov:Activity",
            "name": f"elm-data build manifest (per-document pass version {info['pass']['pass_version']})",
        },
        "distribution": [
            *_manifest_file_objects(manifest, base),
            *_ledger_file_objects(manifest, base),
            *_audit_file_objects(manifest, base, summary),
            *(_shard_file_object(r, base) for r in records),
        ],
        "recordSet": [
            _record_set("shards", SHARDS_FILE, SHARD_SCHEMA, "Per-shard provenance and counts."),
        ],
    }


def _export_date() -> str:
    """Today (UTC), or the day of ``$SOURCE_DATE_EPOCH`` for reproducible exports.

    Not the manifest's ``created_at``: that is outside the manifest id, so a consumer may not publish it.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.date().isoformat()


def _source_keys(records: list[ShardRecord]) -> list[str]:
    return sorted({r.key for r in records})


SYNTHETIC_NOTE = (
    "SYNTHETIC SAMPLE, NOT REAL CORPUS DATA: every shard holds text generated by elm-data's sample "
    "generator, "
    "written in the published format of the subset it is filed under; no shard derives from an upstream "
    "file. "
)


def _synthetic_rai() -> dict[str, Any]:
    """The RAI fields that say what a synthetic manifest's data is (they replace the real-corpus ones)."""
    return {
        "rai:dataCollection": SYNTHETIC_NOTE.strip(),
        "rai:dataCollectionType": ["Others"],
        "rai:dataCollectionRawData": "None: the text is generated (sources/sample_text.py), not collected.",
        "rai:dataLimitations": (
            "Synthetic filler text: for testing the pipeline only, not for training a real model."
        ),
    }


def _dataset_description(manifest: Manifest) -> str:
    info, records = manifest.info, manifest.shards
    totals = info["totals"]
    held = _held_out(totals["docs_heldout"], totals["heldout_tokens"])
    return SYNTHETIC_NOTE * manifest.synthetic + (
        f"elm-data manifest {manifest.manifest_id}: {len(records)} shards of "
        f"{', '.join(_source_keys(records))}; "
        f"{totals['docs_kept']:,} of {totals['docs_read']:,} records kept{held}, "
        f"{totals['tokens']:,} {token_unit(info['tokenizer']['sha256'])}. Merkle root (RFC 6962) over shard "
        "records: "
        f"{info['merkle_root']}."
    )


def _held_out(documents: int, tokens: int) -> str:
    """What a description says of held-out documents: nothing when there are none."""
    if not documents:
        return ""
    return f" ({documents:,} more held out for evaluation, not for training: {tokens:,} tokens)"


def _local_file_object(
    path: Path, base: Path, file_id: str, description: str, encoding: str
) -> dict[str, Any]:
    """A ``cr:FileObject`` for a file of the manifest directory, its URL relative to ``base``."""
    return {
        "@type": "cr:FileObject",
        "@id": file_id,
        "name": file_id,
        "description": description,
        "contentUrl": Path(os.path.relpath(path, base)).as_posix(),
        "contentSize": f"{path.stat().st_size} B",
        "encodingFormat": encoding,
        "sha256": _sha256_file(path),
    }


def _manifest_file_objects(manifest: Manifest, base: Path) -> list[dict[str, Any]]:
    return [
        _local_file_object(
            manifest.path / MANIFEST_FILE,
            base,
            MANIFEST_FILE,
            "Manifest: id, Merkle root, tokenizer, pass config, totals.",
            "application/json",
        ),
        _local_file_object(
            manifest.path / SHARDS_FILE,
            base,
            SHARDS_FILE,
            "One row per corpus shard: hash, licence, counts.",
            "application/x-parquet",
        ),
        _local_file_object(
            manifest.path / BLOCKS_FILE,
            base,
            BLOCKS_FILE,
            "One row per block of every shard: byte range, sha256, records, kept totals, ledger digest.",
            "application/x-parquet",
        ),
    ]


def _ledger_file_objects(manifest: Manifest, base: Path) -> list[dict[str, Any]]:
    """The documents ledger, one parquet file per shard (DOCUMENT_SCHEMA)."""
    return [
        _local_file_object(
            ledger_path(manifest.path, r.shard),
            base,
            f"documents-{r.shard:06d}",
            f"Documents ledger of shard {r.shard}: one row per input record (status, reason, tokens).",
            "application/x-parquet",
        )
        for r in manifest.shards
    ]


def _audit_file_objects(manifest: Manifest, base: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The audit reports bound to this manifest (``audit_store``), each with the sha256 the summary names."""
    out = []
    for kind in KINDS:
        if (audit := summary.get(f"{kind}_audit")) is not None:
            entry = _local_file_object(
                manifest.path / audit["file"],
                base,
                f"audit-{kind}",
                f"The {kind} audit of this manifest (elm-data audit {kind} --save).",
                "application/json",
            )
            out.append(entry | {"sha256": audit["sha256"]})  # the bytes the summary was read from
    return out


def _shard_url(uri: str, base: Path) -> str:
    """Where a shard is, as Croissant may publish it: a URL without credentials, or a local path relative to
    ``base`` (the JSON-LD's folder), never an absolute local path."""
    if "://" in uri and not uri.startswith("file://"):
        return redact_uri(uri)
    return Path(os.path.relpath(uri.removeprefix("file://"), base)).as_posix()


def _shard_file_object(r: ShardRecord, base: Path) -> dict[str, Any]:
    """A corpus shard at its (redacted or relative) location, derived from its upstream file when known."""
    shard_object: dict[str, Any] = {
        "@type": "cr:FileObject",
        "@id": f"shard-{r.shard:05d}",
        "name": f"shard-{r.shard:05d}",
        "description": (
            f"{r.key} shard: {r.docs_kept:,} of {r.docs_read:,} records kept"
            f"{_held_out(r.docs_heldout, r.heldout_tokens)}, {r.tokens:,} tokens."
        ),
        "contentUrl": _shard_url(r.uri, base),
        "contentSize": f"{r.size_bytes} B",
        "encodingFormat": _ENCODINGS.get(r.format, "application/octet-stream"),
        "sha256": r.sha256,
        "license": r.licence,
    }
    if r.upstream:
        derived: dict[str, Any] = {"@id": redact_uri(r.upstream)}
        if r.upstream_revision:
            derived["version"] = r.upstream_revision
        shard_object["prov:wasDerivedFrom"] = derived
    return shard_object


def _preprocessing(info: dict[str, Any]) -> list[str]:
    """The pass as the manifest id covers it (``pass``, ``sequences``, the tokenizer's sha256)."""
    filters = info["pass"]["filters"]
    quality = filters["quality"]
    return [
        "Documents read from the listed shards with their provenance (shard sha256, row/line, id).",
        f"OpenELM/CoreNet rule: drop texts under {filters['min_characters']} characters "
        "(of a SlimPajama-normalised copy) or under "
        f"{filters['min_tokens']} {token_unit(info['tokenizer']['sha256'])}; "
        f"NFC normalisation: {filters['nfc_normalization']}.",
        "Quality filters (datatrove): " + (json.dumps(quality) if quality else "none"),
        f"Sequence forming: {json.dumps(info['sequences'], sort_keys=True)}.",
        f"Tokenizer: SentencePiece sha256 {info['tokenizer']['sha256']}"
        f" ({known_name(info['tokenizer']['sha256']) or 'not a model known by name'}).",
    ]


def _responsible_ai(info: dict[str, Any], records: list[ShardRecord], mix: dict[str, Any]) -> dict[str, Any]:
    """The Croissant RAI fields that apply to a selection of existing public corpora; ``mix``: what is known
    of duplication and contamination (``audit_store.mix_summary``): the dedup filter under preprocessing, the
    bound audits' findings under limitations."""
    totals = info["totals"]
    upstream_dirs = sorted({posixpath.dirname(redact_uri(r.upstream)) for r in records if r.upstream}) or [
        "none"
    ]
    return {
        "rai:dataCollection": (
            "No new collection: a selection of existing public corpora, read shard by shard from their "
            "published files; every shard is pinned by sha256 and listed in the distribution."
        ),
        "rai:dataCollectionType": ["Secondary Data Analysis"],
        "rai:dataCollectionRawData": (
            "The published upstream files each shard derives from (prov:wasDerivedFrom on every shard), "
            "under: " + ", ".join(upstream_dirs)
        ),
        "rai:dataPreprocessingProtocol": _preprocessing(info) + filter_lines(mix),
        "rai:dataManipulationProtocol": (
            "Records the readers could not parse are rejected and counted by reason "
            f"({json.dumps(totals['rejected_by_reason'])}); filtered documents are counted by "
            f"reason ({json.dumps(totals['filtered_by_reason'])}). Texts are not altered."
        ),
        "rai:dataUseCases": [
            "Pre-training OpenELM-style decoder-only language models; auditing a training mix."
        ],
        "rai:dataLimitations": (
            "Inherits the upstream corpora's coverage, errors and biases; length filtering removes short "
            "documents; token counts depend on the pinned tokenizer."
            + "".join(f" {line}" for line in audit_lines(mix))
        ),
        "rai:dataBiases": "Not assessed by this tool; see the upstream corpora's documentation.",
        "rai:personalSensitiveInformation": (
            "Web and code corpora may contain personal information; this tool applies no PII removal."
        ),
    }


def export_croissant(manifest_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the Croissant JSON-LD to ``out`` (default: ``DIR/croissant.json``); returns its path."""
    manifest_dir = Path(manifest_dir)
    out = Path(out) if out else manifest_dir / CROISSANT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = croissant_metadata(manifest_dir, relative_to=out.resolve().parent)
    write_atomic(out, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    return out
