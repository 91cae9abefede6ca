"""The OpenELM/CoreNet rule at its boundaries, CoreNet piece splitting, and datatrove's quality filters."""

from __future__ import annotations

import pickle
import unicodedata

import pytest

from elm_data.core.errors import InvalidValue
from elm_data.pipeline.config import FilterConfig, QualityFilterSpec, SequenceConfig
from elm_data.pipeline.counts import Counts
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.filters import normalize_for_length, split_corenet_pieces
from elm_data.pipeline.quality import QualityFilter, resolve_quality_params
from elm_data.sources.document import Document, Provenance

PROSE = (
    "The river town woke slowly on market days, and the bakers were always the first to light their ovens.\n"
    "By seven o'clock the square was full of carts that had come down from the hill farms before dawn.\n"
    "Children ran between the stalls while their parents argued over the price of apples and cheese.\n"
    "An old clockmaker kept a small shop near the bridge, where he repaired watches for the whole valley.\n"
    "He said that a clock which is never wound is honest twice a day, but a clock that runs fast lies all "
    "day.\n"
    "Travellers who stopped at the inn often asked about the stone tower that stood above the mill.\n"
    "Nobody in the town could say who had built it, although every family had a story about it.\n"
    "In the evening the fishermen returned with their nets, and the smell of smoke drifted over the water.\n"
)


def doc(text: str, index: int = 0, source: str = "test", subset: str = "unit") -> Document:
    prov = Provenance(source, subset, "mem://shard.jsonl", "0" * 64, index, f"doc-{index}", None, "cc-by")
    return Document(text=text, provenance=prov)


def run_one(tokenizer, text: str, **filter_kwargs):
    mode = filter_kwargs.pop("mode", "packed")
    words = filter_kwargs.pop("words_per_piece", 2048)
    the_pass = DocumentPass(
        FilterConfig(**filter_kwargs), SequenceConfig(mode=mode, corenet_words_per_piece=words), tokenizer
    )
    return the_pass.process([doc(text)])[0]


# --- the character rule -------------------------------------------------------------------------


def text_normalising_to(length: int) -> str:
    """A text full of punctuation, capitals and whitespace runs whose normalised copy has ``length`` chars."""
    target = ("abcdefg " * length)[:length]
    target = target[:-1] + "h" if target.endswith(" ") else target
    decorated = "".join(" \t\n " if ch == " " else ch.upper() + ",!'" for ch in target)
    text = "  ...  " + decorated + " !!\n"
    assert normalize_for_length(text) == target and len(target) == length
    return text


def test_normalisation_is_slimpajamas():
    assert normalize_for_length("  Hello,\t\tWORLD!!  It's  \n fine. ") == "hello world its fine"
    assert normalize_for_length("!!! ...") == ""


@pytest.mark.parametrize(("length", "expected"), [(199, "filtered"), (200, "kept")])
def test_min_characters_boundary(tokenizer, length, expected):
    text = text_normalising_to(length)
    assert len(text) > 200  # the raw text is longer; only the normalised copy counts
    result = run_one(tokenizer, text, min_characters=200, min_tokens=0)
    assert result.status == expected
    assert result.reason == (None if expected == "kept" else "min_characters")


def test_character_rule_runs_before_tokenization(tokenizer):
    calls = []

    class CountingTokenizer:
        def encode_batch(self, texts, num_threads=1):
            calls.append(list(texts))
            return tokenizer.encode_batch(texts, num_threads)

        def describe(self):
            return tokenizer.describe()

    the_pass = DocumentPass(FilterConfig(), SequenceConfig(), CountingTokenizer())
    results = the_pass.process([doc("too short"), doc(PROSE * 3, 1)])
    assert [r.reason for r in results] == ["min_characters", None]
    assert calls == [[PROSE * 3]]  # one batch call, holding only the survivor


# --- the token rule -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts_by_token_count(tokenizer):
    """Real texts whose LLaMA token counts are exactly 254, 255 and 256, found by search."""
    words = PROSE.replace("\n", " ").split(" ")
    found: dict[int, str] = {}
    for start in range(len(words)):
        for end in range(start + 1, start + 400):
            text = " ".join(words[i % len(words)] for i in range(start, end))
            n = len(tokenizer.encode(text))
            if n in (254, 255, 256) and n not in found:
                found[n] = text
            if n > 256:
                break
        if len(found) == 3:
            return found
    raise AssertionError(f"could not construct texts of 254-256 tokens (found {sorted(found)})")


@pytest.mark.parametrize(("count", "expected"), [(255, "filtered"), (256, "kept")])
def test_min_tokens_boundary(tokenizer, texts_by_token_count, count, expected):
    text = texts_by_token_count[count]
    assert len(tokenizer.encode(text)) == count
    result = run_one(tokenizer, text, min_characters=200, min_tokens=256)
    assert result.status == expected
    assert result.reason == (None if expected == "kept" else "min_tokens")
    assert result.tokens == (count if expected == "kept" else 0)
    if expected == "kept":
        assert result.segments == [tokenizer.encode(text)]
        assert tokenizer.bos_id not in result.segments[0] and tokenizer.eos_id not in result.segments[0]


@pytest.mark.parametrize(("count", "expected"), [(253, "filtered"), (254, "kept")])
def test_min_tokens_counting_bos_eos_like_openelm_configs(tokenizer, texts_by_token_count, count, expected):
    if count not in texts_by_token_count:  # 253 is built from the 254 text minus its last word
        text = texts_by_token_count[254].rsplit(" ", 1)[0]
        count = len(tokenizer.encode(text))
        assert count < 254
    else:
        text = texts_by_token_count[count]
    result = run_one(tokenizer, text, min_tokens=256, min_tokens_counts_bos_eos=True)
    assert result.status == expected
    assert result.tokens == (count if expected == "kept" else 0)  # segments still hold no BOS/EOS


# --- NFC normalisation --------------------------------------------------------------------------


def test_nfc_flag_changes_what_is_tokenized(tokenizer):
    decomposed = unicodedata.normalize("NFD", "Café déjà vu, naïve résumé. ") * 40
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    plain = run_one(tokenizer, decomposed, min_tokens=0)
    fixed = run_one(tokenizer, decomposed, min_tokens=0, nfc_normalization=True)
    assert plain.segments == [tokenizer.encode(decomposed)]
    assert fixed.segments == [tokenizer.encode(unicodedata.normalize("NFC", decomposed))]
    assert fixed.tokens < plain.tokens
    mojibake = "The cafÃ© was closed. " * 20
    assert tokenizer.decode(
        run_one(tokenizer, mojibake, min_tokens=0, nfc_normalization=True).segments[0]
    ).startswith("The café")


# --- CoreNet pieces -----------------------------------------------------------------------------


def test_split_corenet_pieces_on_single_spaces():
    words = [f"w{i}" for i in range(2048 * 2 + 5)]
    pieces = split_corenet_pieces(" ".join(words), 2048)
    assert [len(p.split(" ")) for p in pieces] == [2048, 2048, 5]
    assert " ".join(pieces) == " ".join(words)
    assert split_corenet_pieces(" ".join(words[:2048]), 2048) == [" ".join(words[:2048])]
    # double spaces make empty "words", exactly as str.split(" ") does in CoreNet
    assert split_corenet_pieces("a  b c", 2) == ["a ", "b c"]
    assert split_corenet_pieces("", 2048) == [""]
    with pytest.raises(ValueError):
        split_corenet_pieces("a", 0)


def test_corenet_mode_filters_each_piece(tokenizer):
    words = PROSE.replace("\n", " ").split(" ")
    body = [words[i % len(words)] for i in range(2 * 300 + 3)]  # pieces of 300, 300 and 3 words
    result = run_one(tokenizer, " ".join(body), mode="corenet", words_per_piece=300)
    assert result.status == "kept" and result.reason is None
    assert result.piece_reasons == (None, None, "min_characters")
    pieces = split_corenet_pieces(" ".join(body), 300)
    assert result.segments == [tokenizer.encode(pieces[0]), tokenizer.encode(pieces[1])]
    assert result.tokens == sum(len(s) for s in result.segments)

    packed = run_one(tokenizer, " ".join(body))
    assert packed.segments == [tokenizer.encode(" ".join(body))]


def test_corenet_document_filtered_with_first_piece_reason(tokenizer):
    # first piece long enough in characters but too few tokens? use: short first piece, then a long one
    text = "tiny " + "x" * 10  # one piece of two words: too short in characters
    result = run_one(tokenizer, text, mode="corenet", words_per_piece=1)
    assert result.status == "filtered"
    assert result.piece_reasons == ("min_characters", "min_characters")
    assert result.reason == "min_characters" and result.segments == [] and result.tokens == 0
    the_pass = DocumentPass(
        FilterConfig(), SequenceConfig(mode="corenet", corenet_words_per_piece=300), tokenizer
    )
    words = PROSE.replace("\n", " ").split(" ")
    long_doc = " ".join(words[i % len(words)] for i in range(603))
    counts = Counts()
    for r in the_pass.process([doc(text), doc(long_doc, 1)]):
        counts.add_result(r, count_pieces=True)
    assert counts.pieces_filtered_by_reason == {"min_characters": 1 + 1}  # the short doc is one piece here
    assert counts.segments == 2  # the long document's two kept pieces


# --- datatrove quality filters ------------------------------------------------------------------

KEEP_DROP = {
    "gopher_quality": ("the cat sat on a mat; " * 3 + PROSE[:50], "gopher_short_doc"),
    "gopher_repetition": ("We sell cheap shoes.\n" * 40, None),
    "c4_quality": ("one line without enough sentences and far too few of them at all", "too_few_sentences"),
    "fineweb_quality": ("\n".join(["a line with no stop"] * 20), "line_punct_ratio"),
}


@pytest.mark.parametrize("name", sorted(KEEP_DROP))
def test_quality_filter_keeps_prose_and_drops_junk(tokenizer, name):
    junk, datatrove_reason = KEEP_DROP[name]
    quality = (QualityFilterSpec(name),)
    kept = run_one(tokenizer, PROSE, min_characters=0, min_tokens=0, quality=quality)
    assert kept.status == "kept", kept.reason
    dropped = run_one(tokenizer, junk, min_characters=0, min_tokens=0, quality=quality)
    assert dropped.status == "filtered"
    assert dropped.reason.startswith(f"{name}:")
    if datatrove_reason:
        assert dropped.reason == f"{name}:{datatrove_reason}"


def test_quality_parameters_are_resolved_and_validated():
    params = resolve_quality_params(QualityFilterSpec("gopher_quality", {"min_stop_words": 3}))
    assert params["min_stop_words"] == 3 and params["min_doc_words"] == 50  # datatrove default recorded
    assert "exclusion_writer" not in params
    with pytest.raises(InvalidValue, match="no parameter"):
        resolve_quality_params(QualityFilterSpec("gopher_quality", {"min_stopwords": 3}))
    with pytest.raises(InvalidValue, match="unknown quality filter"):
        resolve_quality_params(QualityFilterSpec("bogus"))


def test_quality_parameters_change_the_description(tokenizer):
    def described(params):
        spec = QualityFilterSpec("gopher_quality", params)
        return DocumentPass(FilterConfig(quality=(spec,)), SequenceConfig(), tokenizer).describe()

    assert described({}) == described({"min_stop_words": 2})  # explicit default == implicit default
    assert described({}) != described({"min_stop_words": 3})


def test_quality_filter_pickles_without_its_datatrove_object():
    quality_filter = QualityFilter(QualityFilterSpec("gopher_quality"))
    assert quality_filter.check(PROSE) is None  # builds the datatrove filter lazily
    clone = pickle.loads(pickle.dumps(quality_filter))
    assert clone._filter is None
    assert clone.check("hello world") == "gopher_quality:gopher_short_doc"


@pytest.mark.slow  # 2000 random texts against the reference
def test_character_rule_fast_path_is_exact():
    """The prefix shortcut in passes_min_characters must agree with measuring the whole normalised copy."""
    import random

    from elm_data.pipeline.filters import passes_min_characters

    rng = random.Random(7)
    letters = ["a", "Z", "İ", "Σ", "é", "。"]
    junk = [" ", "  ", "\t", "\n", ".", "!!", "'", "-", "\u00a0", "\u2003"]
    near_boundary = 0
    for _ in range(2000):
        density = rng.uniform(0.02, 0.5)  # share of characters that survive normalisation
        size = rng.randint(0, 2400)
        text = "".join(
            rng.choice(letters) if rng.random() < density else rng.choice(junk) for _ in range(size)
        )
        length = len(normalize_for_length(text))
        near_boundary += abs(length - 200) < 20 and size > 4 * 200 + 64
        for minimum in (0, 1, 10, 200):
            assert passes_min_characters(text, minimum) == (length >= minimum)
    assert near_boundary > 10  # the generator really probes long texts around the 200 boundary


def test_corenet_quality_filters_judge_each_piece(tokenizer):
    prose_words = PROSE.split(" ")
    junk_words = ("Buy the shoes and save today\n" * 40).split(" ")[: len(prose_words)]
    junk_words += ["today"] * (len(prose_words) - len(junk_words))
    text = " ".join(prose_words + junk_words)
    quality = (QualityFilterSpec("gopher_repetition"),)
    result = run_one(
        tokenizer, text, mode="corenet", words_per_piece=len(prose_words), min_tokens=0, quality=quality
    )
    assert result.status == "kept"
    assert result.piece_reasons[0] is None and result.piece_reasons[1].startswith("gopher_repetition:")
    assert result.segments == [tokenizer.encode(PROSE)]
    whole = run_one(tokenizer, text, min_tokens=0, quality=quality)  # packed: one verdict for the whole text
    assert len(whole.piece_reasons) == 1
