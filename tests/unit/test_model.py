"""The learned second opinion: safe loading, numpy inference equal to sklearn, reproducible
training, the feedback loop, and the shipped model held to its recorded blind figures."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.common import Severity
from schemas.policy import Policy
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification import model as m
from stream_processors.classification.compare import compare, examples
from stream_processors.classification.training import (
    DATA,
    DEFAULT_MODEL,
    ROOT,
    TRAINING_CORPORA,
    read_labelled,
)

BARS = DATA / "model-bars.json"
# A grooming pattern the corpus lacks, worded like a timetable question: the small model rates it
# low until reviewers' reclassified copies are added to its training data.
NOVEL = (
    "xin hoi ve lich hoc bu mon van tuan sau, anh tro giang hen em den nha anh ay hoc rieng "
    "buoi toi"
)
NOVEL_VARIANTS = [
    NOVEL,
    "hoi lich hoc bu mon van, anh tro giang bat em den nha anh ay hoc rieng buoi toi mot minh",
    "Xin hỏi về lịch học bù môn văn, anh trợ giảng hẹn em đến nhà anh ấy học riêng buổi tối",
    "anh tro giang mon van hen em toi nay den nha rieng hoc bu, dan em dung noi voi bo me",
    "the teaching assistant keeps inviting my daughter to private evening lessons at his flat",
]


@pytest.fixture(scope="module")
def all_rows() -> list[m.Example]:
    return examples([r for p in TRAINING_CORPORA for r in read_labelled(p)])


@pytest.fixture(scope="module")
def small(all_rows: list[m.Example]) -> tuple[m.Fitted, m.TrainedModel]:
    """A model on a third of the corpus: fast, and enough to test the machinery."""
    fitted = m.fit(all_rows[::3], seed=0)
    return fitted, m.from_fitted(fitted, m.DEFAULT_SETTINGS, {"part": "x"})


def test_numpy_inference_equals_sklearn(
    small: tuple[m.Fitted, m.TrainedModel], all_rows: list[m.Example]
) -> None:
    fitted, model = small
    texts = [r.text for r in all_rows[::2]]  # seen and unseen rows, all three styles
    assert len(texts) >= 300
    x = fitted.transform(texts)
    sev, cat = fitted.severity.predict_proba(x), fitted.category.predict_proba(x)
    for i, text in enumerate(texts):
        got_sev, got_cat = model.predict_proba(text)
        np.testing.assert_allclose(got_sev, sev[i], rtol=0, atol=1e-9)
        np.testing.assert_allclose(got_cat, cat[i], rtol=0, atol=1e-9)
    assert model.severity.classes == [str(c) for c in fitted.severity.classes_]


def test_opinion_has_readable_top_features(small: tuple[m.Fitted, m.TrainedModel]) -> None:
    opinion = small[1].predict("Có người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp.")
    assert opinion.severity in {s.value for s in Severity}
    assert abs(sum(opinion.probabilities.values()) - 1.0) < 1e-9
    assert opinion.severity_probability == opinion.probabilities[opinion.severity]
    assert 1 <= len(opinion.top_features) <= 5
    assert all(f == f.strip() and f for f in opinion.top_features)


def test_training_is_reproducible(all_rows: list[m.Example], tmp_path: Path) -> None:
    rows = all_rows[::10]
    a = m.train(rows, seed=3, corpora={"c": "0" * 64}).save(tmp_path / "a.npz")
    b = m.train(rows, seed=3, corpora={"c": "0" * 64}).save(tmp_path / "b.npz")
    assert a == b
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


@pytest.fixture
def saved(small: tuple[m.Fitted, m.TrainedModel], tmp_path: Path) -> Path:
    path = tmp_path / "model.npz"
    small[1].save(path)
    return path


def _arrays(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _rewrite(path: Path, arrays: dict[str, Any]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_load_round_trip_and_version(saved: Path, small: tuple[m.Fitted, m.TrainedModel]) -> None:
    loaded = m.load(saved, expected_sha256=m.file_sha256(saved))
    assert loaded.model_version == m.file_sha256(saved)[:12]
    text = "ban ay noi se tu tu neu bi mang"
    np.testing.assert_array_equal(loaded.predict_proba(text)[0], small[1].predict_proba(text)[0])


def test_load_refuses_a_flipped_byte(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(m.ModelError, match="refused"):
        m.load(saved)


def test_load_refuses_a_changed_array(saved: Path) -> None:
    arrays = _arrays(saved)
    arrays["severity_coef"] = arrays["severity_coef"].copy()
    arrays["severity_coef"][0, 0] += 1.0
    _rewrite(saved, arrays)
    with pytest.raises(m.ModelError, match="digest"):
        m.load(saved)


def test_load_refuses_a_wrong_hash(saved: Path) -> None:
    with pytest.raises(m.ModelError, match="expected"):
        m.load(saved, expected_sha256="0" * 64)


def test_load_refuses_another_schema_version(saved: Path) -> None:
    arrays = _arrays(saved)
    arrays["schema_version"] = np.array(m.SCHEMA_VERSION + 1)
    _rewrite(saved, arrays)
    with pytest.raises(m.ModelError, match="schema version"):
        m.load(saved)


def test_load_refuses_mismatched_shapes(saved: Path) -> None:
    arrays = _arrays(saved)
    arrays.pop("payload_sha256")
    arrays["category_coef"] = arrays["category_coef"][:, :-1]
    arrays["payload_sha256"] = np.array(m._payload_digest(arrays))
    _rewrite(saved, arrays)
    with pytest.raises(m.ModelError, match="category coefficients"):
        m.load(saved)


def test_load_refuses_pickled_content(saved: Path) -> None:
    arrays = _arrays(saved)
    arrays["settings"] = np.array([{"evil": 1}], dtype=object)
    _rewrite(saved, arrays)
    with pytest.raises(m.ModelError):
        m.load(saved)


def test_feedback_loop_catches_a_reviewed_miss(
    small: tuple[m.Fitted, m.TrainedModel], all_rows: list[m.Example], tmp_path: Path
) -> None:
    before = small[1].predict(NOVEL)
    assert before.severity == Severity.low.value
    reviewed = [m.Example(t, "critical", "sexual_exploitation") for t in NOVEL_VARIANTS]
    retrained = m.train(all_rows[::3] + reviewed, seed=0)
    retrained.save(tmp_path / "retrained.npz")
    after = m.load(tmp_path / "retrained.npz").predict(NOVEL)
    assert after.severity == Severity.critical.value


@pytest.mark.parametrize("name", ["batch9", "batch10", "batch11", "batch12"])
def test_shipped_model_holds_its_recorded_blind_figures(name: str) -> None:
    bars = json.loads(BARS.read_text(encoding="utf-8"))["untuned"][name]
    files = sorted((DATA / "untuned").glob(f"reports-{name}-*.jsonl"))
    rows = [r for p in files for r in read_labelled(p)]
    assert len(rows) == 50
    policy = load_yaml_model(ROOT / "escalate" / "defaults" / "policy.yaml", Policy)
    model = m.load(DEFAULT_MODEL)
    result = compare(rows, policy, lambda _i: model).tallies
    crit = Severity.critical
    assert result["rules"].support[crit] == bars["critical"]
    assert result["model"].found[crit] >= bars["model_critical_found"]
    assert result["combined"].found[crit] >= bars["combined_critical_found"]
    assert result["combined"].raised_to_critical <= bars["combined_raised_to_critical_max"]
    # By construction the model adds no police false alarms: a model-only raise waits for review.
    assert result["combined"].police_false_alarms == result["rules"].police_false_alarms
    assert result["combined"].police_at_once == result["rules"].police_at_once
