"""Normalisation: one rule phrase must match every way people type the same words."""

from __future__ import annotations

import pytest

from schemas.rules import ClassificationRules
from stream_processors.classification.normalize import (
    Normalizer,
    PhraseSet,
    canonical,
    fold,
    tokenize,
)

RULES = ClassificationRules.model_validate(
    {
        "lexicon": {
            "ko": "không",
            "k": "không",
            "e": "em",
            "ng": "người",
            "tk": "tài khoản",
            "a": {"expand": "anh", "near": ["ấy", "ay", "bảo", "bao"], "window": 2},
            "mk": {
                "expand": "mật khẩu",
                "near": ["lớp", "zoom", "đổi"],
                "window": 3,
                "otherwise": "mình",
            },
        },
        "compounds": ["đánh giá", "điện thoại"],
    }
)


def matches(text: str, phrase: str) -> bool:
    """True when ``phrase`` occurs in ``text`` after both are normalised."""
    norm = Normalizer(RULES)
    phrases = PhraseSet()
    norm.add_phrase(phrases, phrase)
    return bool(phrases.find(norm.tokens(text).keys))


def test_fold_removes_diacritics_and_d_stroke() -> None:
    assert fold("tự tử") == "tu tu"
    assert fold("Đánh hội đồng") == "Danh hoi dong"


def test_tone_placement_variants_are_equal() -> None:
    assert canonical("khoả") == canonical("khỏa")
    assert canonical("hoà") == canonical("hòa")
    assert canonical("tự") != canonical("tư")


def test_tokenize_casefolds_and_joins_apostrophes() -> None:
    assert tokenize("Don't  TỰ-TỬ, ok?") == ["dont", "tự", "tử", "ok"]
    assert tokenize("18+ content") == ["18+", "content"]


def test_typed_amounts_name_their_unit() -> None:
    assert tokenize("chuyển 300k, rồi 1.5tr và 50000đ") == [
        "chuyển",
        "300",
        "nghìn",
        "rồi",
        "1.5",
        "triệu",
        "và",
        "50000",
        "đồng",
    ]
    assert matches("e chuyen 300k cho shop", "nghìn")
    assert not matches("e chuyen 300k cho shop", "không")
    # Only digits glued to the unit: "4k" is an amount, "k" on its own stays shorthand.
    assert matches("e k biet", "không")
    assert tokenize("abc300k") == ["abc300k"]


@pytest.mark.parametrize(
    "text",
    ["Bạn ấy nói sẽ tự tử", "ban ay noi se tu tu", "BẠN ẤY NÓI SẼ TỰ TỬ", "ban ay  noi se  TU TU"],
)
def test_accented_phrase_matches_every_spelling(text: str) -> None:
    assert matches(text, "tự tử")


def test_accented_text_must_carry_the_same_accents() -> None:
    assert not matches("Em cứ từ từ mà làm bài nhé", "tự tử")


def test_matching_is_on_word_boundaries() -> None:
    assert not matches("có nguy hiểm không", "ngu")
    assert matches("mày ngu lắm", "ngu")


def test_compounds_keep_their_parts_from_matching() -> None:
    assert not matches("cô giáo đánh giá bài", "đánh")
    assert matches("nó dọa đánh em", "đánh")
    assert matches("co giao danh gia bai", "đánh giá")


def test_shorthand_expands_in_text_and_phrases() -> None:
    assert matches("e ko muon di hoc", "không muốn")
    assert matches("ng la nhan tin", "người lạ")
    assert matches("tk bi hack", "tài khoản")


def test_context_shorthand_uses_neighbours() -> None:
    assert matches("mk lop hoc bi lo", "mật khẩu")
    assert not matches("mk buon qua", "mật khẩu")
    assert matches("mk buon qua", "mình")


def test_english_article_is_not_taken_for_anh() -> None:
    assert not matches("A stranger joined the class", "anh")
    assert matches("a ay bao em", "anh ấy")


def test_plain_words_in_accented_text_are_taken_at_face_value() -> None:
    # In a report typed with accents, "anh" is the pronoun, not "ảnh" (photo) without accents.
    assert not matches("Anh ấy nhắn tin cho con tôi mỗi ngày", "ảnh")
    assert matches("anh ay xin anh cua em", "xin ảnh")


# -- ambiguous syllables -------------------------------------------------------------------

AMBIGUOUS = RULES.model_copy(update={"ambiguous_folded": ["ban", "dam", "tu"]})


def matches_with(rules: ClassificationRules, text: str, phrase: str) -> bool:
    norm = Normalizer(rules)
    phrases = PhraseSet()
    norm.add_phrase(phrases, phrase)
    return bool(phrases.find(norm.tokens(text).keys))


def test_an_ambiguous_word_alone_needs_its_accents() -> None:
    # "ban" typed without accents is mostly "bạn" (friend) or "bán" (sell), not "bắn" (shoot).
    assert matches("tui muon ban lai sach cu", "bắn")
    assert not matches_with(AMBIGUOUS, "tui muon ban lai sach cu", "bắn")
    assert not matches_with(AMBIGUOUS, "em ko dam di hoc", "đâm")
    # Typed with its accents it is still evidence, even in an otherwise unaccented report.
    assert matches_with(AMBIGUOUS, "no doa se bắn em", "bắn")
    assert matches_with(AMBIGUOUS, "Nó dọa sẽ bắn em", "bắn")


def test_an_ambiguous_word_matches_inside_a_longer_phrase() -> None:
    assert matches_with(AMBIGUOUS, "t se ban chet m", "bắn chết")
    assert matches_with(AMBIGUOUS, "no doa dam chet em", "đâm chết")
    # Both words ambiguous, but together they read one way: kept, for self-harm recall.
    assert matches_with(AMBIGUOUS, "ban ay noi se tu tu", "tự tử")
    assert not matches_with(AMBIGUOUS, "Em cứ từ từ mà làm", "tự tử")


def test_ambiguity_is_about_the_unaccented_form_only() -> None:
    # "bạn" is not listed by its accented form; other words are untouched.
    assert matches_with(AMBIGUOUS, "ban ay bi tay chay", "bạn ấy")
    assert matches_with(AMBIGUOUS, "ban ay bi tay chay", "tẩy chay")
    assert matches_with(AMBIGUOUS, "bạn ấy bị tẩy chay", "bạn")


def test_a_compound_keeps_a_look_alike_from_matching() -> None:
    rules = AMBIGUOUS.model_copy(update={"compounds": ["danh sách", "tư vấn"]})
    assert not matches_with(rules, "mai co danh sach lop", "đánh")
    assert not matches_with(rules, "em can tu van tam ly", "tự vẫn")
    assert matches_with(rules, "Em muốn tự vẫn", "tự vẫn")
