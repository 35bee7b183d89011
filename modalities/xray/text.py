"""Radiology reports and clinical notes as text: cleaning, sentence splitting, and a BPE tokenizer.

Three steps turn a raw report into what a text encoder reads:

1. :func:`clean_report` normalises the text and keeps the part of a report that describes the image:

   * Unicode NFKC; typographic quotes and dashes become ASCII; control and zero-width characters go;
     the replacement character ``U+FFFD`` (a symbol lost in an earlier encoding, e.g. ``39�2�C``)
     becomes a space so the words on either side stay apart;
   * de-identification placeholders are stripped (:data:`DEID_PATTERNS`: MIMIC-CXR's ``___``,
     MIMIC-III's ``[** ... **]``, IU X-ray's ``XXXX``);
   * section headers (:data:`SECTION_HEADERS`: ``FINDINGS:``, ``IMPRESSION:``, ``EXAMINATION:``,
     ``INDICATION:``, ``TECHNIQUE:``, ``COMPARISON:``, ``HISTORY:``, ``WET READ:``, the
     ``FINAL REPORT`` line, ...) are recognised at the start of a line, in any case. When the report
     has one of the wanted sections (default: FINDINGS and IMPRESSION) only their bodies are kept, in
     the report's order, without the header words; when it has none, the whole text is kept (headers
     included), so free-text notes lose nothing;
   * whitespace follows the plain-text convention of report systems: a single newline is a soft line
     wrap (MIMIC wraps lines mid-sentence) and becomes a space; a paragraph ends at a blank line, before
     a list item (``1.``, ``2)``, ``-``, ``•`` at the start of a line) and before a section header.
     The result has single spaces inside paragraphs, paragraphs separated by a blank line (a single
     newline before a list item), and nothing at either end;
   * small repairs that help sentence splitting without losing a word: a missing space after a
     sentence's full stop (``effusion.Heart`` → ``effusion. Heart``), repeated full stops
     (``clear.. No`` → ``clear. No``), spaces before ``, ; : .``;
   * optional lower-casing (off by default: :class:`BPETokenizer` lower-cases by itself, and
     :func:`split_sentences` uses capitals to settle a few ambiguous full stops).

   Cleaning keeps every word: the alphanumeric runs of its output are those of the NFKC-normalised
   input, in order, less the de-identification placeholders and, when sections are selected, the text
   outside them and the header words. It is idempotent.

2. :func:`split_sentences` splits cleaned text (raw text works too: it applies the same paragraph
   rules) into sentences. A sentence ends at ``.``, ``!`` or ``?`` followed by a space, except after
   abbreviations that never end a sentence (:data:`NONFINAL_ABBREVIATIONS`: ``e.g.``, ``i.e.``,
   ``Dr.``, ``vs.``, ``approx.``, ...), after ``No.``/``Fig.``/... followed by a number
   (:data:`NUMBER_ABBREVIATIONS`) and after a list marker at the start of a sentence (``1.``, ``b.``).
   After a single letter (an initial, or a unit as in ``U / L.``) it ends only when the next word
   starts with a capital; after dotted abbreviations (``p.o.``, ``b.i.d.``, ``U.K.``), ``etc.`` and
   ``et al.`` only when the next word is capitalised but not all capitals (``p.o. The`` ends,
   ``p.o. BID`` does not). Numbers such as ``1.5 cm`` never split (no space after the point).
   ``?`` and ``!`` end a sentence only when attached to the word before and followed by a word
   starting with a capital or digit (``? pneumonia`` and ``38 ? C`` in reports are not questions).
   Paragraph breaks always end a sentence. List markers are stripped from the sentences' starts
   (``strip_markers=False`` keeps them) and pieces without a letter or digit are dropped.

3. :class:`BPETokenizer` is a byte-pair-encoding tokenizer fitted on the corpus, with BERT's special
   tokens and WordPiece's ``##`` continuation convention (see its docstring). It encodes to
   ``[CLS] … [SEP]`` id sequences with an attention mask, saves to and loads from plain JSON.

Example::

    from modalities.xray.text import BPETokenizer, clean_report, split_sentences

    reports = [clean_report(raw) for raw in raw_reports]
    tokenizer = BPETokenizer().fit(reports, vocab_size=2000, min_frequency=2)
    tokenizer.save(run_dir / "tokenizer.json")
    ids, mask = tokenizer.encode_batch(split_sentences(reports[0]), max_length=64)  # (S, 64) int64
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ConfigError, CorruptFileError, DataError

__all__ = [
    "CLS_TOKEN",
    "DEFAULT_SECTIONS",
    "DEID_PATTERNS",
    "MASK_TOKEN",
    "NONFINAL_ABBREVIATIONS",
    "NUMBER_ABBREVIATIONS",
    "PAD_TOKEN",
    "SECTION_HEADERS",
    "SEP_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "BPETokenizer",
    "clean_report",
    "parse_sections",
    "pretokenize",
    "split_sentences",
]

# --- cleaning ---------------------------------------------------------------------------------------

#: Section header spellings (upper case) → the canonical section name. Matched at the start of a line,
#: case-insensitively, followed by a colon. MIMIC-CXR's layout, plus common variants of other sources.
SECTION_HEADERS: dict[str, str] = {
    "FINDINGS AND IMPRESSION": "FINDINGS",
    "FINDINGS": "FINDINGS",
    "FINDING": "FINDINGS",
    "IMPRESSIONS": "IMPRESSION",
    "IMPRESSION": "IMPRESSION",
    "CONCLUSIONS": "IMPRESSION",
    "CONCLUSION": "IMPRESSION",
    "EXAMINATION": "EXAMINATION",
    "EXAM": "EXAMINATION",
    "CLINICAL INDICATION": "INDICATION",
    "INDICATIONS": "INDICATION",
    "INDICATION": "INDICATION",
    "REASON FOR EXAMINATION": "INDICATION",
    "REASON FOR EXAM": "INDICATION",
    "REASON FOR STUDY": "INDICATION",
    "CLINICAL HISTORY": "HISTORY",
    "CLINICAL INFORMATION": "HISTORY",
    "HISTORY": "HISTORY",
    "TECHNIQUES": "TECHNIQUE",
    "TECHNIQUE": "TECHNIQUE",
    "COMPARISONS": "COMPARISON",
    "COMPARISON": "COMPARISON",
    "RECOMMENDATIONS": "RECOMMENDATION",
    "RECOMMENDATION(S)": "RECOMMENDATION",
    "RECOMMENDATION": "RECOMMENDATION",
    "NOTIFICATION": "NOTIFICATION",
    "WET READ": "WET READ",
    "ADDENDUM": "ADDENDUM",
}

#: The sections :func:`clean_report` keeps by default.
DEFAULT_SECTIONS: tuple[str, ...] = ("FINDINGS", "IMPRESSION")

#: De-identification placeholders removed by :func:`clean_report`: MIMIC-CXR's ``___`` (two or more
#: underscores), MIMIC-III's ``[** ... **]``, IU X-ray's ``XXXX`` (three or more capital X as a word).
DEID_PATTERNS: tuple[str, ...] = (r"_{2,}", r"\[\*\*.*?\*\*\]", r"\bX{3,}\b")

_DEID = re.compile("|".join(f"(?:{p})" for p in DEID_PATTERNS), re.DOTALL)
_HEADER = re.compile(
    r"^[ \t]*(?P<name>"
    + "|".join(re.escape(h).replace(r"\ ", r"[ \t]+") for h in sorted(SECTION_HEADERS, key=len, reverse=True))
    + r")[ \t]*:",
    re.IGNORECASE,
)
_REPORT_LINE = re.compile(r"^[ \t]*(?:FINAL|PRELIMINARY)[ \t]+REPORT[ \t]*:?[ \t]*$", re.IGNORECASE)
_LIST_LINE = re.compile(r"^[ \t]*(?:\d{1,2}[.)]|[-*•])[ \t]+\S")
_BLANK = re.compile(r"^[ \t]*$")

_TRANSLATE = {
    0xFFFD: " ",  # replacement character: a symbol lost earlier; keep the neighbours apart
    0x2018: "'",
    0x2019: "'",
    0x201A: "'",
    0x201B: "'",
    0x201C: '"',
    0x201D: '"',
    0x201E: '"',
    0x201F: '"',
    0x2010: "-",
    0x2011: "-",
    0x2012: "-",
    0x2013: "-",
    0x2014: "-",
    0x2015: "-",
    0x2212: "-",
    0x200B: "",
    0x200C: "",
    0x200D: "",
    0x2060: "",
    0xFEFF: "",
    0x00AD: "",  # soft hyphen
}


def _normalize_characters(text: str) -> str:
    """NFKC, ASCII quotes/dashes, ``\\n`` line ends, tabs and other control characters as spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(
        " " if ch != "\n" and unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text
    )


def _is_header_line(line: str) -> bool:
    return bool(_HEADER.match(line) or _REPORT_LINE.match(line))


def _paragraphs(text: str) -> list[str]:
    """Paragraphs of ``text``: soft-wrapped lines joined with single spaces.

    A paragraph ends at a blank line and before a line that starts a list item or a section header.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if _BLANK.match(line):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        if current and (_LIST_LINE.match(line) or _is_header_line(line)):
            paragraphs.append(" ".join(current))
            current = []
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return [p for p in (" ".join(p.split()) for p in paragraphs) if p]


def _join_paragraphs(paragraphs: Sequence[str]) -> str:
    """Blank lines between paragraphs, a single newline before a list item (a hard break anyway)."""
    out = ""
    for i, paragraph in enumerate(paragraphs):
        if i:
            out += "\n" if _LIST_LINE.match(paragraph) else "\n\n"
        out += paragraph
    return out


def parse_sections(text: str) -> list[tuple[str | None, str]]:
    """Split a report into its sections.

    Args:
        text: the report (any line endings).

    Returns:
        ``(name, body)`` pairs in the report's order; ``name`` is the canonical section name
        (:data:`SECTION_HEADERS`), or ``None`` for the text before the first header. A ``FINAL REPORT``
        line is a header named ``"REPORT"``. Bodies are the raw text after the header's colon.
    """
    sections: list[tuple[str | None, str]] = []
    name: str | None = None
    body: list[str] = []
    for line in text.split("\n"):
        header = _HEADER.match(line)
        if header or _REPORT_LINE.match(line):
            if name is not None or any(b.strip() for b in body):
                sections.append((name, "\n".join(body)))
            if header:
                spelled = " ".join(header.group("name").upper().split())
                name = SECTION_HEADERS[spelled]
                body = [line[header.end() :]]
            else:
                name, body = "REPORT", []
        else:
            body.append(line)
    if name is not None or any(b.strip() for b in body):
        sections.append((name, "\n".join(body)))
    return sections


_MISSING_SPACE = re.compile(r"(?<=[a-z]{2})\.(?=[A-Z][a-z])")
_REPEATED_STOPS = re.compile(r"\.(?:[ \t]*\.)+(?![\d.])")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,;:.])(?!\w)")
_LEADING_PUNCT = re.compile(r"[,;:.\s]+")
_EMPTY_BRACKETS = re.compile(r"\([ \t]*\)|\[[ \t]*\]")


def _repair(paragraph: str) -> str:
    """Small punctuation repairs inside one paragraph (idempotent; no alphanumeric character changes)."""
    paragraph = _MISSING_SPACE.sub(". ", paragraph)
    paragraph = _REPEATED_STOPS.sub(".", paragraph)
    paragraph = _EMPTY_BRACKETS.sub(" ", paragraph)
    paragraph = " ".join(paragraph.split())
    paragraph = _SPACE_BEFORE_PUNCT.sub(r"\1", paragraph)
    lead = _LEADING_PUNCT.match(paragraph)  # left over after a header or a removed placeholder
    if lead and not paragraph[lead.end() : lead.end() + 1].isdigit():
        paragraph = paragraph[lead.end() :]
    return paragraph


def clean_report(
    text: str,
    *,
    sections: Sequence[str] | None = DEFAULT_SECTIONS,
    lowercase: bool = False,
) -> str:
    """Clean a radiology report or clinical note (see the module docstring for every step).

    Args:
        text: the raw report. ``None``/NaN are not accepted (pass ``""``).
        sections: canonical section names to keep (:data:`SECTION_HEADERS` values) when the report has
            at least one of them; ``None`` keeps the whole text.
        lowercase: lower-case the result.

    Returns:
        The cleaned text: paragraphs with single spaces, separated by a blank line (a single newline
        before a list item); ``""`` when nothing is left.

    Raises:
        ConfigError: ``text`` is not a string, or ``sections`` names an unknown section.
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"clean_report expects a str, got {type(text).__name__} (pass '' for a missing note)"
        )
    wanted: set[str] = set()
    if sections is not None:
        if isinstance(sections, str):
            raise ConfigError(f"sections must be a sequence of names, got the string {sections!r}")
        wanted = {str(s).upper() for s in sections}
        unknown = wanted - set(SECTION_HEADERS.values())
        if unknown:
            raise ConfigError(
                f"unknown report section(s) {sorted(unknown)}; known: {sorted(set(SECTION_HEADERS.values()))}"
            )
    text = _DEID.sub(" ", _normalize_characters(text))
    parts = parse_sections(text)
    kept = [body for name, body in parts if name in wanted]
    paragraphs: list[str] = []
    for body in kept if kept else [text]:
        paragraphs.extend(_paragraphs(body))
    paragraphs = [p for p in (_repair(p) for p in paragraphs) if p]
    out = _join_paragraphs(paragraphs)
    return out.lower() if lowercase else out


# --- sentences --------------------------------------------------------------------------------------

#: Abbreviations (lower case, without the final full stop) after which a sentence never ends.
NONFINAL_ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "approx", "apprx", "cf", "dr", "drs", "e.g", "eg", "esp", "i.e", "ie", "incl", "mr", "mrs", "ms",
        "prof", "viz", "vs", "w.r.t",
    }
)  # fmt: skip

#: Abbreviations that do not end a sentence when a number follows (``No. 3``, ``Fig. 2``, ``pp. 12``).
NUMBER_ABBREVIATIONS: frozenset[str] = frozenset(
    {"fig", "figs", "no", "nos", "nr", "num", "p", "pp", "ref", "sect", "tab", "vol"}
)

#: Abbreviations that end a sentence only when the next word starts with a capital.
_AMBIGUOUS_ABBREVIATIONS: frozenset[str] = frozenset({"al", "etc"})

_CANDIDATE = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_MARKER = re.compile(r"^(?:\d{1,2}|[A-Za-z])[.)]$")
_LEADING_MARKER = re.compile(r"^(?:(?:\d{1,2}|[A-Za-z])[.)]|[-*•])\s+")
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$")
_ALNUM = re.compile(r"[^\W_]")


def _ends_sentence(paragraph: str, start: int, match: re.Match[str]) -> bool:
    """Whether the terminal punctuation ``match`` ends the sentence that began at ``start``."""
    end = match.end()
    rest = paragraph[end:].lstrip()
    if not rest:
        return True
    following = rest.split(maxsplit=1)[0]
    space = paragraph.rfind(" ", start, match.start())
    token_start = start if space < 0 else space + 1
    token = paragraph[token_start : match.start() + 1]  # the word with its first terminal character
    punct = paragraph[match.start()]
    if punct in "?!":
        attached = match.start() > token_start
        return attached and (following[0].isupper() or following[0].isdigit())
    if token_start == start and _MARKER.match(paragraph[token_start : match.start() + 1]):
        return False  # a list marker at the start of a sentence ("1. ...")
    word = token.lstrip("([\"'")[:-1].lower()
    if word in NONFINAL_ABBREVIATIONS:
        return False
    if word in NUMBER_ABBREVIATIONS and following.lstrip("([")[:1].isdigit():
        return False
    nxt = following.lstrip("([\"'")
    if len(word) == 1 and word.isalpha():
        return nxt[:1].isupper()  # an initial or a unit ("patient B. On", "U / L. Research")
    if word in _AMBIGUOUS_ABBREVIATIONS or _DOTTED.match(word):
        # "p.o. The patient" ends; "p.o. BID" and "etc. and" do not
        return nxt[:1].isupper() and not nxt.rstrip(".,;:)").isupper()
    return True


def _split_paragraph(paragraph: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _CANDIDATE.finditer(paragraph):
        if match.end() <= start:
            continue
        if _ends_sentence(paragraph, start, match):
            sentences.append(paragraph[start : match.end()].strip())
            start = match.end()
            while start < len(paragraph) and paragraph[start] == " ":
                start += 1
    if start < len(paragraph):
        sentences.append(paragraph[start:].strip())
    return sentences


def split_sentences(text: str, *, strip_markers: bool = True) -> list[str]:
    """Split a report into sentences (rules in the module docstring).

    Args:
        text: cleaned text (:func:`clean_report`) or raw text; newlines follow the paragraph rules of
            :func:`clean_report` (a single newline is a soft wrap).
        strip_markers: remove list markers (``1.``, ``2)``, ``b.``, ``-``, ``•``) from the start of the
            sentences.

    Returns:
        The sentences, whitespace collapsed to single spaces, each with at least one letter or digit.
        With ``strip_markers=False`` their concatenation has exactly the non-space characters of
        ``text`` less the dropped letter-less pieces.
    """
    if not isinstance(text, str):
        raise ConfigError(f"split_sentences expects a str, got {type(text).__name__}")
    sentences: list[str] = []
    for paragraph in _paragraphs(text):
        for sentence in _split_paragraph(paragraph):
            if strip_markers:
                sentence = _LEADING_MARKER.sub("", sentence)
            if _ALNUM.search(sentence):
                sentences.append(sentence)
    return sentences


# --- tokenizer --------------------------------------------------------------------------------------

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
#: The special tokens in id order: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)

_CONTINUATION = "##"
_PRETOKEN = re.compile(r"\w+|[^\w\s]")
_FORMAT = "medcl.BPETokenizer"
_FORMAT_VERSION = 1


def pretokenize(text: str, lowercase: bool = True) -> list[str]:
    """The words a :class:`BPETokenizer` sees: NFKC (+ lower case), then runs of word characters
    (letters, digits, ``_``) and single punctuation characters; whitespace separates and is dropped."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return _PRETOKEN.findall(text)


def _word_symbols(word: str) -> list[str]:
    """A word as its initial character and ``##``-prefixed continuation characters."""
    return [word[0]] + [_CONTINUATION + ch for ch in word[1:]]


def _merged(a: str, b: str) -> str:
    """The token that merging ``a`` and the continuation symbol ``b`` makes (``"l" + "##o"`` → ``"lo"``)."""
    return a + b[len(_CONTINUATION) :]


class BPETokenizer:
    """Byte-pair encoding (Sennrich et al., 2016) over characters, fitted on the corpus.

    * Words come from :func:`pretokenize` (lower-cased by default). Each word starts as its characters,
      the first as is and the others with WordPiece's ``##`` continuation prefix (``lung`` →
      ``l ##u ##n ##g``), so word boundaries survive tokenization and :meth:`decode` can rebuild words.
    * :meth:`fit` counts words, takes the alphabet (every initial and continuation character, the most
      frequent first if ``vocab_size`` cannot hold them all), then repeatedly merges the most frequent
      adjacent pair of symbols (summed over words × word counts) into a new token, until the vocabulary
      has ``vocab_size`` tokens or no pair occurs ``min_frequency`` times. Ties go to the pair that
      sorts first as ``(left, right)`` strings, so fitting is deterministic and independent of the
      corpus order.
    * Encoding a word applies the learned merges by rank (lowest first, every non-overlapping
      occurrence left to right), exactly as fitting did; a character outside the alphabet becomes
      ``[UNK]`` (one per character) while the rest of the word still gets its subwords.
    * Vocabulary: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4, the alphabet
      (sorted by frequency, then string), then the merged tokens in merge order.

    Args:
        lowercase: lower-case text before tokenizing.
    """

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = bool(lowercase)
        self._vocab: list[str] = list(SPECIAL_TOKENS)
        self._merges: list[tuple[str, str]] = []
        self._build_index()

    # -- state ---------------------------------------------------------------------------------------

    def _build_index(self) -> None:
        self._ids = {token: i for i, token in enumerate(self._vocab)}
        self._ranks = {pair: rank for rank, pair in enumerate(self._merges)}
        self._cache: dict[str, list[int]] = {}

    @property
    def is_fitted(self) -> bool:
        """Whether the tokenizer has a vocabulary beyond the special tokens."""
        return len(self._vocab) > len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included (the text encoder's ``vocab_size``)."""
        return len(self._vocab)

    @property
    def vocab(self) -> list[str]:
        """The tokens by id (a copy)."""
        return list(self._vocab)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The learned merges in rank order (a copy)."""
        return list(self._merges)

    pad_id: int = 0
    unk_id: int = 1
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4

    def token_to_id(self, token: str) -> int:
        """The id of ``token`` (``[UNK]``'s id when it is not in the vocabulary)."""
        return self._ids.get(token, self.unk_id)

    def id_to_token(self, index: int) -> str:
        """The token of ``index``."""
        if not 0 <= int(index) < len(self._vocab):
            raise ConfigError(f"token id {index} outside the vocabulary (size {len(self._vocab)})")
        return self._vocab[int(index)]

    # -- fitting -------------------------------------------------------------------------------------

    def fit(self, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
        """Learn the alphabet and merges from ``texts`` (replacing any earlier fit).

        Args:
            texts: the corpus (cleaned reports or sentences).
            vocab_size: the largest vocabulary, special tokens included (> 5).
            min_frequency: a pair is merged only if it occurs at least this many times (≥ 1).

        Returns:
            ``self``.

        Raises:
            ConfigError: bad sizes, a non-string text, or an empty corpus.
        """
        vocab_size, min_frequency = int(vocab_size), int(min_frequency)
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ConfigError(
                f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}"
            )
        if min_frequency < 1:
            raise ConfigError(f"min_frequency must be at least 1, got {min_frequency}")
        word_counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigError(f"text {i} of the corpus is a {type(text).__name__}, not a str")
            word_counts.update(pretokenize(text, self.lowercase))
        if not word_counts:
            raise ConfigError("cannot fit a tokenizer on an empty corpus (no words in the texts)")

        words = sorted(word_counts)  # a fixed order: fitting must not depend on the corpus order
        freqs = [word_counts[w] for w in words]
        symbols = [_word_symbols(w) for w in words]
        char_counts: Counter[str] = Counter()
        for syms, freq in zip(symbols, freqs, strict=True):
            for s in syms:
                char_counts[s] += freq
        alphabet = sorted(char_counts, key=lambda s: (-char_counts[s], s))
        alphabet = alphabet[: vocab_size - len(SPECIAL_TOKENS)]
        vocab = list(SPECIAL_TOKENS) + alphabet
        known = set(vocab)
        # Symbols outside the (truncated) alphabet become None: they never merge.
        seqs: list[list[str | None]] = [[s if s in known else None for s in syms] for syms in symbols]

        pair_counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)

        def pairs_of(seq: list[str | None]) -> Counter[tuple[str, str]]:
            out: Counter[tuple[str, str]] = Counter()
            for a, b in itertools.pairwise(seq):
                if a is not None and b is not None:
                    out[(a, b)] += 1
            return out

        for w, seq in enumerate(seqs):
            for pair, n in pairs_of(seq).items():
                pair_counts[pair] += n * freqs[w]
                where[pair].add(w)
        heap = [(-c, pair) for pair, c in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[str, str]] = []
        while len(vocab) < vocab_size and heap:
            negative, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -negative:
                continue  # stale entry
            if count < min_frequency:
                break
            new = _merged(*pair)
            merges.append(pair)
            if new not in known:
                vocab.append(new)
                known.add(new)
            changed: set[tuple[str, str]] = set()
            for w in sorted(where.pop(pair, ())):
                seq = seqs[w]
                old = pairs_of(seq)
                merged = _merge_sequence(seq, pair, new)
                if merged == seq:
                    continue
                seqs[w] = merged
                fresh = pairs_of(merged)
                for p, n in old.items():
                    pair_counts[p] -= n * freqs[w]
                    changed.add(p)
                    if p not in fresh:
                        where[p].discard(w)
                for p, n in fresh.items():
                    pair_counts[p] += n * freqs[w]
                    changed.add(p)
                    where[p].add(w)
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    pair_counts.pop(p, None)
        self._vocab, self._merges = vocab, merges
        self._build_index()
        return self

    # -- encoding ------------------------------------------------------------------------------------

    def _word_ids(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        seq: list[str | None] = [s if s in self._ids else None for s in _word_symbols(word)]
        while True:
            best: tuple[int, tuple[str, str]] | None = None
            for a, b in itertools.pairwise(seq):
                if a is None or b is None:
                    continue
                rank = self._ranks.get((a, b))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, (a, b))
            if best is None:
                break
            pair = best[1]
            seq = _merge_sequence(seq, pair, _merged(*pair))
        ids = [self.unk_id if s is None else self._ids[s] for s in seq]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text``, without special tokens."""
        return [self._vocab[i] for i in self._ids_of(text)]

    def _ids_of(self, text: str) -> list[int]:
        if not self.is_fitted:
            raise ConfigError("the tokenizer is not fitted: call fit(texts, vocab_size) or load(path) first")
        if not isinstance(text, str):
            raise ConfigError(f"the tokenizer encodes str, got {type(text).__name__}")
        ids: list[int] = []
        for word in pretokenize(text, self.lowercase):
            ids.extend(self._word_ids(word))
        return ids

    def encode(self, text: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
        """``[CLS] tokens [SEP]`` ids and the attention mask.

        Args:
            text: the text.
            max_length: if given (≥ 2), truncate to this many ids (the last one stays ``[SEP]``) and pad
                with ``[PAD]`` = 0 up to it.

        Returns:
            ``(ids, attention_mask)``, lists of equal length; the mask is 1 on real tokens, 0 on padding.
        """
        body = self._ids_of(text)
        if max_length is not None:
            max_length = _check_max_length(max_length)
            body = body[: max_length - 2]
        ids = [self.cls_id, *body, self.sep_id]
        mask = [1] * len(ids)
        if max_length is not None:
            pad = max_length - len(ids)
            ids += [self.pad_id] * pad
            mask += [0] * pad
        return ids, mask

    def encode_batch(
        self, texts: Sequence[str], max_length: int, pad_to_longest: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode several texts into padded int64 arrays.

        Args:
            texts: ``N`` texts.
            max_length: the sequence length ``L`` (texts are truncated to it).
            pad_to_longest: pad only to the longest encoded text (≤ ``max_length``) instead of
                ``max_length``.

        Returns:
            ``ids`` and ``attention_mask``, int64 arrays ``(N, L)``.
        """
        if isinstance(texts, str):
            raise ConfigError("encode_batch takes a sequence of texts, got a single str (use encode)")
        max_length = _check_max_length(max_length)
        rows = [self.encode(t, max_length) for t in texts]
        ids = np.array([r[0] for r in rows], dtype=np.int64).reshape(len(rows), max_length)
        mask = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), max_length)
        if pad_to_longest:
            width = max(2, int(mask.sum(axis=1).max())) if len(rows) else 2
            ids, mask = ids[:, :width].copy(), mask[:, :width].copy()
        return ids, mask

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Rebuild the words of ``ids``: continuation pieces (``##…``) join the piece before; words are
        separated by single spaces (punctuation is a word: ``"clear ."``).

        Args:
            ids: token ids (a list, or a 1-D array/tensor).
            skip_special_tokens: leave out ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``.

        Returns:
            ``" ".join(pretokenize(text))`` for a text whose characters are all in the alphabet.
        """
        words: list[str] = []
        open_word = False
        for index in ids:
            token = self.id_to_token(int(index))
            if token in SPECIAL_TOKENS:
                open_word = False
                if not skip_special_tokens:
                    words.append(token)
                continue
            if token.startswith(_CONTINUATION) and open_word:
                words[-1] += token[len(_CONTINUATION) :]
            else:
                words.append(token[len(_CONTINUATION) :] if token.startswith(_CONTINUATION) else token)
            open_word = True
        return " ".join(words)

    # -- persistence ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The tokenizer as plain JSON data (for a file or a checkpoint's metadata)."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "lowercase": self.lowercase,
            "vocab": list(self._vocab),
            "merges": [list(pair) for pair in self._merges],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> BPETokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` data, checking it.

        Raises:
            CorruptFileError: the data is not a valid tokenizer (``source`` names where it came from).
        """

        def bad(reason: str) -> CorruptFileError:
            return CorruptFileError(
                source, f"not a valid medcl tokenizer: {reason}", "refit and save it again"
            )

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise bad(f"format is {data.get('format')!r}, expected {_FORMAT!r}")
        if data.get("version") != _FORMAT_VERSION:
            raise bad(f"version {data.get('version')!r} is not {_FORMAT_VERSION}")
        vocab, merges, lowercase = data.get("vocab"), data.get("merges"), data.get("lowercase")
        if not isinstance(lowercase, bool):
            raise bad("'lowercase' must be true or false")
        if not isinstance(vocab, list) or not all(isinstance(t, str) and t for t in vocab):
            raise bad("'vocab' must be a list of non-empty strings")
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise bad(f"the vocabulary must start with {list(SPECIAL_TOKENS)}")
        if len(set(vocab)) != len(vocab):
            raise bad("the vocabulary has duplicate tokens")
        if not isinstance(merges, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m) for m in merges
        ):
            raise bad("'merges' must be a list of [left, right] string pairs")
        known = set(vocab)
        for left, right in merges:
            if left not in known or right not in known or not right.startswith(_CONTINUATION):
                raise bad(f"merge [{left!r}, {right!r}] uses a token outside the vocabulary")
            if _merged(left, right) not in known:
                raise bad(f"merge [{left!r}, {right!r}] makes a token missing from the vocabulary")
        tokenizer = cls(lowercase=lowercase)
        tokenizer._vocab = list(vocab)
        tokenizer._merges = [(a, b) for a, b in merges]
        tokenizer._build_index()
        return tokenizer

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON (UTF-8); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save` (plain JSON: nothing is executed).

        Raises:
            DataError: the file is missing. CorruptFileError: it is not a valid tokenizer file.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "tokenizer file not found", "fit a BPETokenizer and save() it there")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptFileError(
                path, f"not a JSON tokenizer file ({error})", "refit and save it again"
            ) from error
        return cls.from_dict(data, source=path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        merges, lowercase = len(self._merges), self.lowercase
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={merges}, lowercase={lowercase})"


def _merge_sequence(seq: list[str | None], pair: tuple[str, str], new: str) -> list[str | None]:
    """``seq`` with every non-overlapping occurrence of ``pair`` (left to right) replaced by ``new``."""
    out: list[str | None] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def _check_max_length(max_length: int) -> int:
    if isinstance(max_length, bool) or int(max_length) != max_length or int(max_length) < 2:
        raise ConfigError(f"max_length must be an integer ≥ 2 (room for [CLS] and [SEP]), got {max_length!r}")
    return int(max_length)
