"""What the model is asked: the transcription and translation instructions, and options as tasks carry them."""

from __future__ import annotations

from serve.generation import (
    SYSTEM_PROMPT,
    TRANSLATION_SYSTEM_PROMPT,
    GenerationOptions,
    instruction_for,
    system_prompt_for,
)


def test_translation_follows_the_authors_recipe() -> None:
    assert instruction_for("auto", target_language="en") == \
        "Listen to the provided speech and produce a translation in English text."
    assert instruction_for("zh", "Qwen", target_language="en") == (
        "Listen to the provided Chinese speech and produce a translation in English text. "
        "The audio may mention: Qwen")
    assert system_prompt_for(GenerationOptions(target_language="zh")) == TRANSLATION_SYSTEM_PROMPT
    assert system_prompt_for(GenerationOptions()) == SYSTEM_PROMPT


def test_options_travel_without_the_optional_settings_left_unset() -> None:
    # A worker of an earlier version lacks target_language: a transcription's options must still build there.
    plain = GenerationOptions(max_new_tokens=5, language="de")
    assert "target_language" not in plain.to_dict() and "align" not in plain.to_dict()
    assert GenerationOptions(**plain.to_dict()) == plain
    translating = GenerationOptions(target_language="en", align=None)
    assert translating.to_dict()["target_language"] == "en"
    assert GenerationOptions(**translating.to_dict()) == translating
