"""Report text: cleaning, sentence splitting and the BPE tokenizer.

Checked against hand-written expectations (a MIMIC-CXR style report, abbreviation cases, a hand-computed
BPE run), a slow reference BPE written here, and the real clinical notes of ``covid_cxr`` (no word is
lost; hand-checked sentence boundaries; encode/decode round trips).
"""

from __future__ import annotations

import itertools
import json
import pickle
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.xray.text import (
    SPECIAL_TOKENS,
    BPETokenizer,
    clean_report,
    parse_sections,
    pretokenize,
    split_sentences,
)

# --- fixtures ---------------------------------------------------------------------------------------

MIMIC_REPORT = "\n".join(
    [
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        " ",
        " INDICATION:  ___F with new onset ascites  // eval for infection",
        " ",
        " TECHNIQUE:  Chest PA and lateral",
        " ",
        " COMPARISON:  None.",
        " ",
        " FINDINGS: ",
        " ",
        " There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral",
        " nodular opacities that most likely represent nipple shadows. The",
        " cardiomediastinal silhouette is normal.  Clips project over the left lung,",
        " potentially within the breast.",
        " ",
        " IMPRESSION: ",
        " ",
        " 1. No acute cardiopulmonary process.",
        " 2. Nodular opacities measuring approx. 1.5 cm, e.g. nipple shadows vs. nodules; Dr. ___ was",
        " notified by phone at 3:15 p.m. on ___.",
        " 3. Recommend PA film, No. 3 view.",
        "",
    ]
)

MIMIC_CLEAN = (
    "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities that "
    "most likely represent nipple shadows. The cardiomediastinal silhouette is normal. Clips project over "
    "the left lung, potentially within the breast.\n"
    "1. No acute cardiopulmonary process.\n"
    "2. Nodular opacities measuring approx. 1.5 cm, e.g. nipple shadows vs. nodules; Dr. was notified by "
    "phone at 3:15 p.m. on.\n"
    "3. Recommend PA film, No. 3 view."
)

MIMIC_SENTENCES = [
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "Bilateral nodular opacities that most likely represent nipple shadows.",
    "The cardiomediastinal silhouette is normal.",
    "Clips project over the left lung, potentially within the breast.",
    "No acute cardiopulmonary process.",
    "Nodular opacities measuring approx. 1.5 cm, e.g. nipple shadows vs. nodules; Dr. was notified by "
    "phone at 3:15 p.m. on.",
    "Recommend PA film, No. 3 view.",
]


def words(text: str) -> list[str]:
    """Alphanumeric runs, in order (what "no word is lost" compares)."""
    return re.findall(r"[^\W_]+", text)


@pytest.fixture(scope="module")
def covid_notes(shared_data: Path) -> list[str]:
    """The distinct real clinical notes of covid_cxr."""
    table = pd.read_csv(shared_data / "covid_cxr" / "metadata.csv")
    notes = table["clinical_notes"].dropna().drop_duplicates().tolist()
    assert len(notes) > 400
    return notes


@pytest.fixture(scope="module")
def covid_clean(covid_notes: list[str]) -> list[str]:
    return [clean_report(note) for note in covid_notes]


@pytest.fixture(scope="module")
def covid_tokenizer(covid_clean: list[str]) -> BPETokenizer:
    return BPETokenizer().fit(covid_clean, vocab_size=1500, min_frequency=2)


def note_with(notes: list[str], fragment: str) -> str:
    hits = [n for n in notes if fragment in n]
    assert hits, f"no note contains {fragment!r}"
    return hits[0]


# --- cleaning ---------------------------------------------------------------------------------------


def test_mimic_report_keeps_findings_and_impression() -> None:
    cleaned = clean_report(MIMIC_REPORT)
    assert cleaned == MIMIC_CLEAN
    assert clean_report(cleaned) == cleaned  # idempotent (the newlines before list items are hard)


def test_parse_sections_names_and_bodies() -> None:
    names = [name for name, _ in parse_sections(MIMIC_REPORT)]
    assert names == [
        "REPORT",
        "EXAMINATION",
        "INDICATION",
        "TECHNIQUE",
        "COMPARISON",
        "FINDINGS",
        "IMPRESSION",
    ]
    bodies = dict(parse_sections(MIMIC_REPORT))
    assert bodies["COMPARISON"].strip() == "None."
    assert parse_sections("no headers here") == [(None, "no headers here")]


def test_section_selection_and_fallback() -> None:
    assert clean_report(MIMIC_REPORT, sections=["impression"]) == MIMIC_CLEAN[MIMIC_CLEAN.index("1. No") :]
    assert clean_report(MIMIC_REPORT, sections=("COMPARISON",)) == "None."
    everything = clean_report(MIMIC_REPORT, sections=None)
    assert everything.startswith("FINAL REPORT\n\nEXAMINATION: CHEST (PA AND LAT)\n\nINDICATION: F with new")
    assert "\n\nFINDINGS:\n\nThere is no focal" in everything and "IMPRESSION:\n1. No acute" in everything
    # no wanted section: the whole text stays, header words included
    note = "INDICATION: cough.\nTECHNIQUE: PA view.\n\nLungs are clear."
    assert clean_report(note) == "INDICATION: cough.\n\nTECHNIQUE: PA view.\n\nLungs are clear."
    # headers only count at the start of a line, so a note mentioning them keeps every word
    inline = "Presentation: cough. Imaging Notes: clear lungs. Impression: normal."
    assert clean_report(inline) == inline
    # other spellings: lower case, FINDINGS AND IMPRESSION, CONCLUSION
    assert clean_report("history: fever\nfindings and impression: clear.") == "clear."
    assert clean_report("Exam: CXR\nConclusion: Normal.\n") == "Normal."


def test_soft_wraps_paragraphs_and_lists() -> None:
    text = (
        "FINDINGS: The heart is\n  normal in size.\n\n  Lungs are\nclear.\n- No effusion.\n* No pneumothorax."
    )
    assert (
        clean_report(text)
        == "The heart is normal in size.\n\nLungs are clear.\n- No effusion.\n* No pneumothorax."
    )
    assert split_sentences(clean_report(text)) == [
        "The heart is normal in size.",
        "Lungs are clear.",
        "No effusion.",
        "No pneumothorax.",
    ]


def test_deid_placeholders_removed() -> None:
    text = "Dr. ___ discussed with [**First Name8 (NamePattern2) **] on ___ at XXXX hours, patient XX."
    assert clean_report(text) == "Dr. discussed with on at hours, patient XX."


def test_unicode_and_character_normalisation() -> None:
    text = (
        "\ufeffFINDINGS:\r\n“Patchy” opacities \u2013 ﬁbrosis\u00a0in\tthe  right\u200b base; "
        "temperature 39\ufffd2\ufffdC.\r\nHeart size normal..  No effusion . ."
    )
    assert clean_report(text) == (
        '"Patchy" opacities - fibrosis in the right base; temperature 39 2 C. Heart size normal. No effusion.'
    )
    assert clean_report("１２ ｍｍ nodule") == "12 mm nodule"  # NFKC full-width forms


def test_lowercase_option_and_missing_space_repair() -> None:
    assert clean_report("No pleural effusion.Heart normal. CT.Scan", lowercase=True) == (
        "no pleural effusion. heart normal. ct.scan"
    )


def test_clean_report_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="expects a str"):
        clean_report(float("nan"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown report section"):
        clean_report("x", sections=("FINDINGS", "DIAGNOSIS"))
    with pytest.raises(ConfigError, match="sequence of names"):
        clean_report("x", sections="FINDINGS")  # type: ignore[arg-type]
    assert clean_report("") == "" and clean_report("  ___ \n\n ") == ""


@pytest.mark.shared_data
def test_real_notes_lose_no_word_and_clean_idempotently(
    covid_notes: list[str], covid_clean: list[str]
) -> None:
    changed = 0
    for note, cleaned in zip(covid_notes, covid_clean, strict=True):
        assert words(cleaned) == words(unicodedata.normalize("NFKC", note))
        assert clean_report(cleaned) == cleaned
        assert "  " not in cleaned and cleaned == cleaned.strip()
        changed += cleaned != note
    assert changed > 50  # real repairs happened (double stops, missing spaces, U+FFFD)


# --- sentences --------------------------------------------------------------------------------------

SPLIT_CASES = [
    ("Heart size normal. Lungs clear.", ["Heart size normal.", "Lungs clear."]),
    ("Nodule of approx. 1.5 cm in the left apex.", ["Nodule of approx. 1.5 cm in the left apex."]),
    (
        "Signs of infection, e.g. consolidation, are absent.",
        ["Signs of infection, e.g. consolidation, are absent."],
    ),
    ("Seen by Dr. Smith. Discussed.", ["Seen by Dr. Smith.", "Discussed."]),
    ("Atelectasis vs. pneumonia. Follow up.", ["Atelectasis vs. pneumonia.", "Follow up."]),
    ("See image No. 3 and Fig. 2b. Stable.", ["See image No. 3 and Fig. 2b.", "Stable."]),
    ("Answer: no. The rest is normal.", ["Answer: no.", "The rest is normal."]),
    ("Tylenol 500 mg p.o. BID. Improved.", ["Tylenol 500 mg p.o. BID.", "Improved."]),
    ("Given 1 g p.o. The patient improved.", ["Given 1 g p.o.", "The patient improved."]),
    ("Effusion, atelectasis, etc. are absent.", ["Effusion, atelectasis, etc. are absent."]),
    ("Case 1. On day 3 it worsened.", ["Case 1.", "On day 3 it worsened."]),
    ("1. No acute process. 2. Stable cardiomegaly.", ["No acute process.", "Stable cardiomegaly."]),
    ("1. No acute process.\n2. Stable\ncardiomegaly.", ["No acute process.", "Stable cardiomegaly."]),
    ("Lungs are\nclear.\n\nNo effusion", ["Lungs are clear.", "No effusion"]),
    ("Eval for ? pneumonia. Temp 38 ? C today.", ["Eval for ? pneumonia.", "Temp 38 ? C today."]),
    ("Is it new? Yes. Really! OK.", ["Is it new?", "Yes.", "Really!", "OK."]),
    ("A ?wet market? (a market) visit.", ["A ?wet market? (a market) visit."]),
    ("Opacity (Fig. 1a). Labs were normal.", ["Opacity (Fig. 1a).", "Labs were normal."]),
    ("LDH 279 U / L. Research swab positive.", ["LDH 279 U / L.", "Research swab positive."]),
    ("Clear lungs... No effusion.", ["Clear lungs...", "No effusion."]),
    (
        "right base opacity. no effusion. heart normal.",
        ["right base opacity.", "no effusion.", "heart normal."],
    ),
    ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
    (". . .", []),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_sentences_cases(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_keeps_markers_when_asked() -> None:
    assert split_sentences("1. No acute process.\n2) Stable.", strip_markers=False) == [
        "1. No acute process.",
        "2) Stable.",
    ]


def test_mimic_report_sentences() -> None:
    assert split_sentences(clean_report(MIMIC_REPORT)) == MIMIC_SENTENCES


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        # hand-checked boundaries in real notes: (a fragment that picks the note, consecutive sentences)
        (
            "Presentation: SOB and myalgia. . Imaging",
            ["Presentation: SOB and myalgia.", "Imaging Notes: Heart size normal.", "Lungs clear."],
        ),
        ("P.O. BID", ["The therapeutic regimen included Hydroxychloroquine at a dose of 200 mg P.O. BID and "
                      "lopinavir/ritonavir at a dose of 200/50 mg P.O. BID initiated for the patient."]),
        ("son of Case 1.", ["Case 2 (37 years old) was the son of Case 1.", "On January 23, he reported "
                            "mild sore throat and cough that started 3 days earlier, even before onset of "
                            "symptoms in the index case (Figure 1A)."]),
        ("LDH 279 U / L.", ["Normal blood count, PCR 10.12 mg / L, PCT 0.13 ng / mL; LDH 279 U / L.",
                            "Research SARS-CoV-2 (COVID-19) RNA on nasopharyngeal swab: DETECTED."]),
        ("?wet market?", ["He reported that he had not been exposed to a ?wet market? (a market where dead "
                          "and live animals are sold) in Wuhan."]),
        ("pyrexia over 38 ? C", ["Male, 50 years old, non-co-pathological, symptomatic for two days, "
                                 "worsening, with dry cough, pyrexia over 38 ? C, asthenia."]),
        ("No pleural effusion.Heart", ["No pleural effusion.", "Heart and small circle within limits."]),
        ("SARS-CoV-2. b. Repeat", ["Nasopharyngeal swab RT-PCR was positive for SARS-CoV-2.",
                                   "Repeat chest radiograph day 5 with bilateral ground glass opacification "
                                   "in the lower zones (Classic/Probable COVID-19)."]),
        ("i.e., 98 %", ["At that time, her vital signs were within normal limits, including SpO2 (i.e., 98 % "
                        "on room air) (Fig. 1A).", "On 18 February, she complained of cough and exacerbation "
                        "of malaise and anorexia and had an associated 3 kg body weight loss."]),
    ],
)  # fmt: skip
def test_real_notes_hand_checked_sentences(
    covid_notes: list[str], fragment: str, expected: list[str]
) -> None:
    sentences = split_sentences(clean_report(note_with(covid_notes, fragment)))
    starts = [i for i, s in enumerate(sentences) if s == expected[0]]
    assert starts, f"{expected[0]!r} is not a sentence of the note"
    assert sentences[starts[0] : starts[0] + len(expected)] == expected


@pytest.mark.shared_data
def test_real_notes_sentences_keep_every_word(covid_clean: list[str]) -> None:
    total = 0
    for cleaned in covid_clean:
        kept = split_sentences(cleaned, strip_markers=False)
        assert words(" ".join(kept)) == words(cleaned)
        assert all(s == " ".join(s.split()) and s for s in kept)
        total += len(kept)
    assert total > 2000  # the ~500 notes have several sentences each


_PIECES = [*"abcAB12 .,?!:()\n\t-", "é", "ﬁ", "\ufffd", "No.", "e.g.", "1. ", "\n2) ", "FINDINGS:", "\n\n"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_property_cleaning_and_splitting_lose_no_word(text: str) -> None:
    cleaned = clean_report(text, sections=None)
    assert words(cleaned) == words(unicodedata.normalize("NFKC", text))
    assert clean_report(cleaned, sections=None) == cleaned
    assert words(" ".join(split_sentences(cleaned, strip_markers=False))) == words(cleaned)


# --- tokenizer: a hand-computed run ----------------------------------------------------------------

# Sennrich et al.'s example corpus: low ×5, lower ×2, newest ×6, widest ×3.
TINY_CORPUS = ["low " * 5, "lower lower", "newest " * 6, "widest widest widest"]
# Alphabet by (−count, symbol): ##e 17, ##w 13, ##s 9, ##t 9, ##o 7, l 7, n 6, ##d 3, ##i 3, w 3, ##r 2.
TINY_ALPHABET = ["##e", "##w", "##s", "##t", "##o", "l", "n", "##d", "##i", "w", "##r"]
# Pair counts, by hand: (##e,##s) 9 = (##s,##t) 9 → the smaller pair, then (##es,##t) 9; (##o,##w) 7 =
# (l,##o) 7 → "##o" < "l"; (l,##ow) 7; then the 6s: (##e,##w) < (##w,##est) < (n,##e); (##ew,##est) 6;
# (n,##ewest) 6; the 3s of widest from the right; last (##e,##r) 2 and (low,##er) 2.
TINY_MERGES = [
    ("##e", "##s"),
    ("##es", "##t"),
    ("##o", "##w"),
    ("l", "##ow"),
    ("##e", "##w"),
    ("##ew", "##est"),
    ("n", "##ewest"),
    ("##d", "##est"),
    ("##i", "##dest"),
    ("w", "##idest"),
    ("##e", "##r"),
    ("low", "##er"),
]
TINY_NEW = [
    "##es",
    "##est",
    "##ow",
    "low",
    "##ew",
    "##ewest",
    "newest",
    "##dest",
    "##idest",
    "widest",
    "##er",
    "lower",
]


def test_bpe_matches_hand_computation() -> None:
    tok = BPETokenizer().fit(TINY_CORPUS, vocab_size=100, min_frequency=1)
    assert tok.merges == TINY_MERGES
    assert tok.vocab == [*SPECIAL_TOKENS, *TINY_ALPHABET, *TINY_NEW]
    assert tok.tokenize("lowest newer") == ["low", "##est", "n", "##ew", "##er"]
    assert tok.tokenize("Widest lower") == ["widest", "lower"]  # lower-cased
    # min_frequency stops before the pairs seen twice; vocab_size stops after 4 merges
    assert BPETokenizer().fit(TINY_CORPUS, 100, min_frequency=3).merges == TINY_MERGES[:10]
    small = BPETokenizer().fit(TINY_CORPUS, vocab_size=5 + 11 + 4, min_frequency=1)
    assert small.merges == TINY_MERGES[:4] and small.vocab_size == 20
    # alphabet larger than the budget: the most frequent symbols fill it, the rest become [UNK]
    tiny = BPETokenizer().fit(TINY_CORPUS, vocab_size=8, min_frequency=1)
    assert tiny.vocab == [*SPECIAL_TOKENS, "##e", "##w", "##s"] and tiny.merges == []
    assert tiny.tokenize("news") == ["[UNK]", "##e", "##w", "##s"]


def test_unknown_characters_fall_back_to_unk_and_subwords() -> None:
    tok = BPETokenizer().fit(TINY_CORPUS, vocab_size=100, min_frequency=1)
    assert tok.tokenize("lowz") == ["low", "[UNK]"]
    assert tok.tokenize("zlow") == ["[UNK]", "[UNK]", "##ow"]  # "##l" never occurs in the corpus
    ids, _ = tok.encode("zlow lowest")
    assert tok.decode(ids) == "ow lowest"  # [UNK] is dropped and ends the word it was in
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] [UNK] [UNK] ow lowest [SEP]"


def reference_bpe(texts: list[str], vocab_size: int, min_frequency: int) -> list[tuple[str, str]]:
    """Slow BPE: recount every pair over every word at each step; ties to the smallest pair."""
    counts = Counter(w for t in texts for w in pretokenize(t))
    seqs = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    alphabet = Counter()
    for w, seq in seqs.items():
        for s in seq:
            alphabet[s] += counts[w]
    size = len(SPECIAL_TOKENS) + len(alphabet)
    vocab = set(alphabet)
    merges = []
    while size < vocab_size:
        pairs = Counter()
        for w, seq in seqs.items():
            for a, b in itertools.pairwise(seq):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        new = best[0] + best[1][2:]
        if new not in vocab:
            vocab.add(new)
            size += 1
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return merges


@pytest.mark.shared_data
def test_bpe_equals_slow_reference_on_real_notes(covid_clean: list[str]) -> None:
    texts = covid_clean[:40]
    fast = BPETokenizer().fit(texts, vocab_size=450, min_frequency=2)
    assert len(fast.merges) > 100
    assert fast.merges == reference_bpe(texts, vocab_size=450, min_frequency=2)
    # a repeated-symbol word exercises overlapping pairs ("##a ##a ##a")
    texts = ["baaaa baaa aaaa aa", "baaaa"]
    assert BPETokenizer().fit(texts, 40, 1).merges == reference_bpe(texts, 40, 1)


# --- tokenizer on the real notes --------------------------------------------------------------------


@pytest.mark.shared_data
def test_round_trip_on_real_notes(covid_tokenizer: BPETokenizer, covid_clean: list[str]) -> None:
    assert covid_tokenizer.vocab_size == 1500
    for text in covid_clean:
        ids, mask = covid_tokenizer.encode(text)
        assert ids[0] == covid_tokenizer.cls_id and ids[-1] == covid_tokenizer.sep_id and all(mask)
        assert covid_tokenizer.unk_id not in ids
        assert covid_tokenizer.decode(ids) == " ".join(pretokenize(text))
    # frequent words became single tokens
    assert covid_tokenizer.tokenize("the patient with pneumonia") == ["the", "patient", "with", "pneumonia"]


@pytest.mark.shared_data
def test_held_out_words_fall_back_to_subwords(covid_clean: list[str]) -> None:
    tok = BPETokenizer().fit(covid_clean[::2], vocab_size=800, min_frequency=2)
    alphabet = {
        t.removeprefix("##") for t in tok.vocab[len(SPECIAL_TOKENS) :] if len(t.removeprefix("##")) == 1
    }
    unseen = 0
    for text in covid_clean[1::2]:
        for word in pretokenize(text):
            pieces = tok.tokenize(word)
            if all(c in alphabet for c in word) and all(p != "[UNK]" for p in pieces):
                assert "".join(p.removeprefix("##") for p in pieces) == word
                assert all(p.startswith("##") for p in pieces[1:]) and not pieces[0].startswith("##")
                unseen += len(pieces) > 1
            else:
                assert "[UNK]" in pieces
    assert unseen > 100


def test_encode_truncation_padding_and_batch() -> None:
    tok = BPETokenizer().fit(TINY_CORPUS, vocab_size=100, min_frequency=1)
    ids, mask = tok.encode("low lower newest", max_length=8)
    low, lower, newest = (tok.token_to_id(t) for t in ("low", "lower", "newest"))
    assert ids == [2, low, lower, newest, 3, 0, 0, 0] and mask == [1, 1, 1, 1, 1, 0, 0, 0]
    assert tok.encode("low lower newest", max_length=4) == ([2, low, lower, 3], [1, 1, 1, 1])
    batch, batch_mask = tok.encode_batch(["low", "low lower newest widest", ""], max_length=5)
    assert batch.dtype == np.int64 and batch_mask.dtype == np.int64 and batch.shape == (3, 5)
    assert batch.tolist() == [[2, low, 3, 0, 0], [2, low, lower, newest, 3], [2, 3, 0, 0, 0]]
    assert batch_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    short, short_mask = tok.encode_batch(["low", "low lower"], max_length=10, pad_to_longest=True)
    assert short.shape == (2, 4) and short_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert tok.encode_batch([], max_length=6)[0].shape == (0, 6)
    with pytest.raises(ConfigError, match="max_length"):
        tok.encode("low", max_length=1)
    with pytest.raises(ConfigError, match="single str"):
        tok.encode_batch("low", max_length=4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not fitted"):
        BPETokenizer().encode("low")


def test_fit_is_deterministic_and_order_free() -> None:
    corpus = [
        f"{w} {v}." for w in ("lung", "lungs", "pleura", "pleural") for v in ("clear", "opaque", "normal")
    ]
    shuffled = corpus[:]
    random.Random(0).shuffle(shuffled)
    a = BPETokenizer().fit(corpus, 40, 1)
    b = BPETokenizer().fit(shuffled, 40, 1)
    assert a.to_dict() == b.to_dict() and a.vocab_size == 40
    assert json.dumps(a.to_dict()) == json.dumps(BPETokenizer().fit(corpus, 40, 1).to_dict())


def test_fit_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="special tokens"):
        BPETokenizer().fit(["a b"], vocab_size=5)
    with pytest.raises(ConfigError, match="min_frequency"):
        BPETokenizer().fit(["a b"], vocab_size=10, min_frequency=0)
    with pytest.raises(ConfigError, match="empty corpus"):
        BPETokenizer().fit(["", "  "], vocab_size=10)
    with pytest.raises(ConfigError, match="not a str"):
        BPETokenizer().fit(["a", None], vocab_size=10)  # type: ignore[list-item]


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = BPETokenizer(lowercase=False).fit([*TINY_CORPUS, "Lower Newest"], vocab_size=40, min_frequency=1)
    path = tok.save(tmp_path / "run" / "tokenizer.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"format", "version", "lowercase", "vocab", "merges"} and data["lowercase"] is False
    loaded = BPETokenizer.load(path)
    assert loaded == tok
    assert loaded.encode("Lower lowest", 6) == tok.encode("Lower lowest", 6)
    assert BPETokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok


def test_load_refuses_bad_files(tmp_path: Path) -> None:
    tok = BPETokenizer().fit(TINY_CORPUS, vocab_size=100, min_frequency=1)
    with pytest.raises(DataError, match="not found"):
        BPETokenizer.load(tmp_path / "missing.json")
    pickled = tmp_path / "tokenizer.pkl"
    pickled.write_bytes(pickle.dumps(tok))
    with pytest.raises(CorruptFileError, match="not a JSON tokenizer"):
        BPETokenizer.load(pickled)
    good = tok.to_dict()
    broken = {
        "format": {**good, "format": "other"},
        "must start": {**good, "vocab": good["vocab"][1:]},
        "duplicate": {**good, "vocab": [*good["vocab"], "low"]},
        "outside the vocabulary": {**good, "merges": [*good["merges"], ["low", "##zz"]]},
        "missing from the vocabulary": {**good, "vocab": [t for t in good["vocab"] if t != "lower"]},
        "lowercase": {**good, "lowercase": "yes"},
        "JSON object": [good],
    }
    for message, data in broken.items():
        path = tmp_path / f"{message[:8].replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(CorruptFileError, match=message) as error:
            BPETokenizer.load(path)
        assert str(path) in str(error.value)
