"""Scoring: the published normalization, and WER/CER against hand-computed figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve.evaluation import Score, contains_words, corpus_rate, guess_language, normalize, score


def test_english_is_normalized_as_the_published_results_are() -> None:
    assert normalize("Hello, World!  It's  DONE.", "en") == "hello world it is done"
    assert normalize("Mr. Smith paid $20.", "en") == normalize("mister smith paid twenty dollars", "en")
    assert normalize("colour", "en") == normalize("color", "en")  # British and American spellings agree


def test_chinese_loses_punctuation_and_spaces_and_folds_to_simplified() -> None:
    assert normalize("今天天氣很好， 我們去公園！", "zh") == "今天天气很好我们去公园"
    assert normalize("Bonjour, LE monde !", "fr") == "bonjour le monde"


@pytest.mark.parametrize(("reference", "hypothesis", "language", "errors", "length"), [
    ("the cat sat on the mat", "the cat sat on mat", "en", 1, 6),        # one deletion
    ("the cat sat on the mat", "a cat sat on the mat today", "en", 2, 6),  # a substitution and an insertion
    ("The cat, sat on the MAT!", "the cat sat on the mat", "en", 0, 6),   # case and punctuation are free
    ("", "", "en", 0, 0),
    ("hello world", "", "en", 2, 2),
    ("今天天气很好", "今天天氣不好", "zh", 1, 6),  # 氣 = 气 after the fold; 不 for 很 is one substitution
    ("今天天气很好", "今天天气很好啊", "zh", 1, 6),  # one inserted character
    ("我们去公园", "我们公园", "zh", 1, 5),
])
def test_edit_counts_match_hand_computed_figures(reference: str, hypothesis: str, language: str, errors: int,
                                                 length: int) -> None:
    result = score(reference, hypothesis, language)
    assert (result.errors, result.reference_length) == (errors, length)
    assert result.characters == (language == "zh")


def test_rates_are_errors_over_reference_length_and_the_corpus_rate_pools_them() -> None:
    first = score("the cat sat on the mat", "the cat sat on mat", "en")
    second = score("the cat sat on the mat", "a cat sat on the mat today", "en")
    assert first.rate == pytest.approx(1 / 6) and second.rate == pytest.approx(2 / 6)
    assert corpus_rate([first, second]) == pytest.approx(3 / 12)  # not the mean of the two rates
    assert corpus_rate([first, score("the dog runs fast", "the dog runs fast", "en")]) == pytest.approx(1 / 10)
    assert corpus_rate([]) is None
    assert Score(0, 0, 2, 0, False).rate == 1.0 and Score(0, 0, 0, 0, False).rate == 0.0


def test_expected_words_are_found_whatever_the_case_punctuation_or_script() -> None:
    assert contains_words("The QUICK, brown fox!", ["quick", "Brown", "dog"], "en") == ["dog"]
    assert contains_words("今天天氣很好，我們去公園。", ["天气", "公园", "星期五"], "zh") == ["星期五"]


def test_language_is_guessed_from_the_script_of_the_reference() -> None:
    assert guess_language("今天天气很好") == "zh" and guess_language("Good morning") == "en"


def test_manifest_languages_are_read_in_any_case_and_unknown_ones_refused(tmp_path: Path) -> None:
    import evaluate

    manifest = tmp_path / "set.jsonl"
    rows = [{"audio": "a.wav", "text": "今天天气", "language": "ZH"},
            {"audio": "b.wav", "text": "今天天气", "language": "Auto"},
            {"audio": "c.wav", "text": "Hello there", "language": ""},
            {"audio": "d.wav", "text": "Hallo", "language": "de"}]
    manifest.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows))
    items = evaluate.read_manifest(manifest)
    assert [(i.language, i.requested) for i in items] == [("zh", "zh"), ("zh", "auto"), ("en", "auto"), ("de", "de")]
    assert score("今天天气", "今天天氣", items[0].language).errors == 0  # scored as Chinese: the script is folded
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "x", "language": "klingon"}))
    with pytest.raises(SystemExit, match="entry 1: unknown language 'klingon'"):
        evaluate.read_manifest(manifest)
