"""Deterministic synthetic text in the style of each corpus, built from word lists and templates.

Every generator takes a ``random.Random`` and a target word count and returns text of roughly that
many whitespace-separated words: web pages, LaTeX papers, Q&A threads, source code, wiki articles,
book chapters, reddit threads and paper abstracts. Nothing here is copied from a real corpus.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NOUNS = _words(
    "system model river garden network village engine theory market signal pattern library circuit protein "
    "harbor algorithm window festival mountain language archive sensor record vessel council bridge kernel "
    "forest policy canvas mineral orbit journey recipe museum frame dataset compiler lattice membrane budget "
    "province neighbour lantern harvest telescope treaty melody quarry pipeline gradient cathedral glacier "
    "ledger parameter workshop voltage mosaic estuary tenant reactor courier chapter meadow sequence"
)
VERBS = _words(
    "describes improves connects reveals supports measures follows changes builds shapes reduces explains "
    "carries tracks combines protects predicts returns generates balances records transforms guides limits "
    "extends observes compares replaces resolves captures"
)
ADJECTIVES = _words(
    "small ancient robust early quiet complex local open careful bright rural formal narrow gentle stable "
    "modern sparse dense northern vivid linear typical rare wooden simple frequent distant coastal precise"
)
ADVERBS = _words("quickly often rarely carefully slowly clearly usually largely directly gradually")
CONNECTORS = (
    "However,",
    "In addition,",
    "As a result,",
    "For example,",
    "Meanwhile,",
    "In practice,",
    "Still,",
    "By contrast,",
    "Over time,",
    "Later,",
)
NAMES = (
    "Ada Brennan",
    "Tomas Okafor",
    "Mei Lindqvist",
    "Rafael Duarte",
    "Ingrid Sato",
    "Kwame Fischer",
    "Leila Novak",
    "Oren Castillo",
    "Priya Haldane",
    "Jonas Abara",
    "Selin Marchetti",
    "Hugo Tanaka",
)
PLACES = ("Aldermoor", "Kestrel Bay", "Varnholt", "Linden Falls", "Saint Orrin", "Mirecourt", "Tallow Creek")
DOMAINS = (
    "example.com",
    "northwind.org",
    "fieldnotes.net",
    "harbourtimes.co.uk",
    "cityguide.io",
    "learnhub.edu",
)
SUBREDDITS = ("askscience", "woodworking", "learnpython", "history", "cooking", "bicycling", "astronomy")
FIELDS = (
    "Computer Science",
    "Biology",
    "Physics",
    "Medicine",
    "Economics",
    "Materials Science",
    "Mathematics",
)
ARXIV_CATS = ("cs.LG", "math.PR", "astro-ph.GA", "q-bio.NC", "cond-mat.str-el", "stat.ML", "hep-th")
ACCENTED = ("café", "naïve", "Zürich", "São Paulo", "Ångström", "façade", "Łódź", "déjà vu", "–", "“quoted”")


def sentence(rng: random.Random, min_words: int = 6, max_words: int = 18) -> str:
    """One plausible English sentence."""
    n = rng.randint(min_words, max_words)
    words = [rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(VERBS)]
    while len(words) < n:
        roll = rng.random()
        if roll < 0.45:
            words.append(rng.choice(NOUNS))
        elif roll < 0.65:
            words.append(rng.choice(ADJECTIVES))
        elif roll < 0.75:
            words.append(rng.choice(ADVERBS))
        elif roll < 0.8:
            words.append(rng.choice(PLACES).split()[0])
        elif roll < 0.83:
            words.append(rng.choice(ACCENTED).split()[0])
        else:
            words.append(rng.choice(("the", "a", "of", "and", "with", "in", "for", "to", "near", "from")))
    text = " ".join(words)
    if rng.random() < 0.25:
        text = f"{rng.choice(CONNECTORS)} {text}"
    return text[0].upper() + text[1:] + rng.choice((".", ".", ".", "!", "?", "."))


def prose(rng: random.Random, words: int, para_sentences: tuple[int, int] = (3, 7)) -> str:
    """Paragraphs of sentences totalling about ``words`` words."""
    paragraphs, total = [], 0
    while total < words:
        para = []
        for _ in range(rng.randint(*para_sentences)):
            s = sentence(rng)
            para.append(s)
            total += len(s.split())
            if total >= words:
                break
        paragraphs.append(" ".join(para))
    return "\n\n".join(paragraphs)


def url(rng: random.Random) -> str:
    path = "-".join(rng.choice(NOUNS) for _ in range(rng.randint(1, 4)))
    return f"https://www.{rng.choice(DOMAINS)}/{rng.choice(('blog', 'news', 'guides', 'articles'))}/{path}"


def title(rng: random.Random, n: int = 4) -> str:
    return " ".join(
        w.capitalize() for w in [rng.choice(ADJECTIVES)] + [rng.choice(NOUNS) for _ in range(n - 1)]
    )


def web_page(rng: random.Random, words: int) -> str:
    head = title(rng, rng.randint(3, 7))
    body = prose(rng, max(words - 12, 1))
    tail = (
        f"Read more at {url(rng)}" if rng.random() < 0.5 else f"Posted by {rng.choice(NAMES)} | Share | Reply"
    )
    return f"{head}\n\n{body}\n\n{tail}"


def latex_paper(rng: random.Random, words: int) -> str:
    parts = [f"\\section{{Introduction}}\n\n{prose(rng, min(words, 120))} \\cite{{{rng.choice(NOUNS)}2019}}."]
    total = min(words, 120)
    k = 0
    while total < words:
        k += 1
        name = rng.choice(("Method", "Results", "Related Work", "Analysis", "Experiments", "Discussion"))
        eq = (
            f"\\begin{{equation}}\n  \\mathcal{{L}}_{{{k}}}(\\theta) = \\sum_{{i=1}}^{{N}} "
            f"\\log p_\\theta(x_i \\mid x_{{<i}}) + \\lambda "
            f"\\|\\theta\\|_{rng.randint(1, 2)}^2\n\\end{{equation}}"
        )
        chunk = min(words - total, rng.randint(150, 400))
        parts.append(f"\\section{{{name}}}\n\n{prose(rng, chunk)} Let $x \\in \\mathbb{{R}}^{{d}}$.\n\n{eq}")
        total += chunk + 20
    return "\n\n".join(parts)


def qa_thread(rng: random.Random, words: int) -> str:
    question = prose(rng, max(words // 4, 5), (2, 4))
    answer = prose(rng, max(words - words // 4, 5))
    return f"Q:\n\n{title(rng, 6)}?\n\n{question}\n\nA:\n\n{answer}"


def _python_function(rng: random.Random) -> str:
    name = f"{rng.choice(VERBS)[:-1]}_{rng.choice(NOUNS)}"
    arg, other = rng.choice(NOUNS), rng.choice(NOUNS)
    return (
        f"def {name}({arg}, {other}=None):\n"
        f'    """{sentence(rng, 5, 10)}"""\n'
        f"    result = []\n"
        f"    for item in {arg}:\n"
        f"        if item is not None and item != {other}:\n"
        f"            result.append(item * {rng.randint(2, 9)})  # {rng.choice(ADJECTIVES)} "
        f"{rng.choice(NOUNS)}\n"
        f"    return result\n"
    )


def _js_function(rng: random.Random) -> str:
    name = f"{rng.choice(VERBS)[:-1]}{rng.choice(NOUNS).capitalize()}"
    return (
        f"export function {name}(items, limit = {rng.randint(8, 64)}) {{\n"
        f"  // {sentence(rng, 5, 10)}\n"
        f"  const out = items.filter((x) => x.{rng.choice(NOUNS)} > limit);\n"
        f"  return out.map((x) => ({{ id: x.id, value: x.value * {rng.randint(2, 5)} }}));\n"
        f"}}\n"
    )


def _c_function(rng: random.Random) -> str:
    name = f"{rng.choice(NOUNS)}_{rng.choice(VERBS)[:-1]}"
    return (
        f"/* {sentence(rng, 5, 10)} */\n"
        f"static int {name}(const int *values, size_t n) {{\n"
        f"    int total = 0;\n"
        f"    for (size_t i = 0; i < n; ++i) {{\n"
        f"        if (values[i] > {rng.randint(0, 100)}) total += values[i];\n"
        f"    }}\n"
        f"    return total;\n"
        f"}}\n"
    )


LANGUAGES: dict[str, tuple[str, Callable[[random.Random], str], str]] = {
    "Python": (".py", _python_function, "import os\nimport sys\n\n"),
    "JavaScript": (".js", _js_function, "'use strict';\n\n"),
    "C": (".c", _c_function, "#include <stdio.h>\n#include <stdlib.h>\n\n"),
}


def source_code(rng: random.Random, words: int, language: str | None = None) -> str:
    language = language or rng.choice(sorted(LANGUAGES))
    _, make, header = LANGUAGES[language]
    parts, total = [header], len(header.split())
    while total < words:
        fn = make(rng)
        parts.append(fn + "\n")
        total += len(fn.split())
    return "".join(parts).rstrip("\n") + "\n"


def wiki_article(rng: random.Random, words: int, headings: bool = False) -> str:
    name = title(rng, 2)
    lead = (
        f"{name} is a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} in {rng.choice(PLACES)}. {sentence(rng)}"
    )
    body = prose(rng, max(words - len(lead.split()), 1))
    if headings:
        sections = body.split("\n\n")
        for i in range(1, len(sections), 3):
            heading = rng.choice(("History", "Geography", "Culture", "Economy", "See also"))
            sections[i] = f"== {heading} ==\n\n{sections[i]}"
        body = "\n\n".join(sections)
    return f"{name}\n\n{lead}\n\n{body}"


def book_chapter(rng: random.Random, words: int) -> str:
    roman = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")
    person = rng.choice(NAMES)
    chapters, total, k = [], 0, 0
    while total < words:
        chunk = min(words - total, rng.randint(300, 1500))
        said = f"\u201c{sentence(rng, 4, 10)}\u201d said {person.split()[0]}."
        chapters.append(f"CHAPTER {roman[k % len(roman)]}.\n\n{said}\n\n{prose(rng, chunk, (4, 9))}")
        total += chunk + 6
        k += 1
    return "\n\n\n".join(chapters)


def reddit_thread(rng: random.Random, words: int) -> str:
    posts, total = [f"{title(rng, 6)}\n\n{prose(rng, min(words, 60), (1, 3))}"], min(words, 60)
    while total < words:
        chunk = min(words - total, rng.randint(20, 150))
        posts.append(prose(rng, chunk, (1, 4)))
        total += chunk
    return "\n\n".join(posts)


def paper_abstract(rng: random.Random, words: int) -> str:
    head = f"{title(rng, 7)}\n\nAbstract\n\n{prose(rng, min(words, 180), (5, 9))}"
    if words <= 180:
        return head
    return f"{head}\n\n1 Introduction\n\n{prose(rng, words - 180)}"


def mixed(rng: random.Random, words: int) -> str:
    """Any style, for mixed corpora such as the Pile."""
    make = rng.choice(
        (web_page, latex_paper, qa_thread, source_code, wiki_article, book_chapter, paper_abstract)
    )
    return make(rng, words)


def short_snippet(rng: random.Random) -> str:
    """A document well under 200 characters (filtered by OpenELM's rule)."""
    return sentence(rng, 4, 14)


def short_code(rng: random.Random) -> str:
    """A source file well under 200 characters."""
    language = rng.choice(sorted(LANGUAGES))
    body = {"Python": "print(__name__)\n", "JavaScript": "module.exports = {};\n", "C": "int x = 1;\n"}[
        language
    ]
    return LANGUAGES[language][2] + body
