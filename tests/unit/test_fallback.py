"""The example-based second opinion for reports no rule recognises."""

from __future__ import annotations

import pytest

from schemas.common import Category
from stream_processors.classification.fallback import ExampleModel, features

EXAMPLES = [
    ("người lạ đòi con tôi gửi ảnh khỏa thân", Category.sexual_exploitation),
    ("a stranger asked my daughter for nude photos", Category.sexual_exploitation),
    ("mật khẩu phòng zoom bị lộ trên facebook", Category.credential_leak),
    ("our zoom passcode was posted online", Category.credential_leak),
    ("cho tôi hỏi lịch học tuần sau", Category.other),
    ("the portal is slow today", Category.other),
]


def test_features_fold_diacritics_and_keep_word_pairs() -> None:
    assert features("Tự tử") == features("tu tu") == {"tu", "tu tu"}


def test_predicts_the_category_of_the_most_similar_examples() -> None:
    model = ExampleModel(EXAMPLES)
    category, probability = model.predict("nguoi la doi gui anh khoa than")
    assert category is Category.sexual_exploitation
    assert 0.5 < probability <= 1.0
    assert model.predict("mat khau zoom bi lo")[0] is Category.credential_leak


def test_unknown_words_leave_the_prior() -> None:
    model = ExampleModel(EXAMPLES)
    _, probability = model.predict("qwerty asdf")
    assert probability == pytest.approx(1 / 3)


def test_version_follows_the_examples() -> None:
    assert ExampleModel(EXAMPLES).version == ExampleModel(list(EXAMPLES)).version
    assert ExampleModel(EXAMPLES).version != ExampleModel(EXAMPLES[:-1]).version
    with pytest.raises(ValueError):
        ExampleModel([])
