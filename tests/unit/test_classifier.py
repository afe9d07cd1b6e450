"""The default policy's classifier against labelled reports, and its safety rules one by one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.common import Category, Severity
from schemas.policy import Policy
from schemas.reports import ReportIn
from schemas.yaml_loader import content_version, load_yaml_model, parse_yaml_text
from stream_processors.classification.engine import Classifier
from stream_processors.classification.evaluate import (
    EvaluationReport,
    LabelledReport,
    evaluate,
    render_text,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "escalate" / "defaults" / "policy.yaml"
DEV_CORPUS = REPO / "tests" / "data" / "reports-dev.jsonl"
HELDOUT = REPO / "tests" / "data" / "reports-heldout.jsonl"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_yaml_model(DEFAULT_POLICY, Policy)


@pytest.fixture(scope="module")
def classifier(policy: Policy) -> Classifier:
    return Classifier(policy)


def load_rows(path: Path) -> list[LabelledReport]:
    """Labelled rows; a missing corpus is a failure, never a skip."""
    assert path.is_file(), f"labelled corpus not found at {path}"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            data = json.loads(line)
            rows.append(
                LabelledReport(
                    line=number,
                    report=ReportIn.model_validate(data["report"]),
                    severity=Severity(data["expect"]["severity"]),
                    category=Category(data["expect"]["category"]),
                )
            )
    return rows


def report(description: str, **extra: object) -> ReportIn:
    return ReportIn.model_validate(
        {
            "channel": "app",
            "reporter_role": "student",
            "school_code": "HN-TEST-001",
            "description": description,
            **extra,
        }
    )


def check(result: EvaluationReport) -> str:
    return render_text(result)


# -- corpus bars ---------------------------------------------------------------------------


def test_dev_corpus_bars(policy: Policy) -> None:
    rows = load_rows(DEV_CORPUS)
    assert len(rows) >= 50
    result = evaluate(rows, policy)
    text = check(result)
    assert result.critical_recall == 1.0, text
    assert result.severity_accuracy >= 0.95, text
    assert result.category_accuracy >= 0.9, text
    assert result.non_critical_to_police == 0, text


def test_heldout_corpus_bars(policy: Policy) -> None:
    rows = load_rows(HELDOUT)
    assert len(rows) >= 60
    result = evaluate(rows, policy)
    text = check(result)
    assert result.critical_recall == 1.0, text
    assert result.severity_accuracy >= 0.9, text
    assert result.category_accuracy >= 0.85, text
    assert result.non_critical_to_police <= 1, text


# -- negation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Không có học sinh nào gặp nguy hiểm, chỉ là lớp bị trùng lịch.",
        "khong co ai bi de doa ca, chi la mang cham",
        "Chưa ai bị đe dọa, tôi chỉ hỏi về lịch học.",
        "No one was threatened, the video just froze.",
        "No child is in danger, the link expired.",
        "Nobody is in danger, I just want to report a broken link.",
        "Con tôi không có dấu hiệu tự làm hại bản thân, chỉ hơi mệt.",
        "Trường có tài liệu về phòng chống xâm hại tình dục không ạ?",
    ],
)
def test_negated_danger_is_not_critical(classifier: Classifier, text: str) -> None:
    decision = classifier.classify(report(text))
    assert decision.severity != Severity.critical, decision.reasons


@pytest.mark.parametrize(
    "text",
    [
        "Không có em nào bị thương hay bị đe dọa cả, mạng trường yếu.",
        "Không có cháu nào bị xúc phạm hay gặp nguy hiểm gì, tôi chỉ góp ý.",
        "khong co ban nao bi bat nat hay de doa gi ca",
        "ko ai bi lam sao hay gap nguy hiem, mat dien thoi",
        "Chưa có học sinh nào gặp nguy hiểm hay bị dọa, chỉ hỏi lịch học.",
        "No one was harmed or threatened; the camera stopped working.",
        "No students were threatened or hurt, the fire drill ended the lesson early.",
    ],
)
def test_quantified_negation_reaches_a_short_list(classifier: Classifier, text: str) -> None:
    decision = classifier.classify(report(text))
    assert decision.severity not in (Severity.critical, Severity.high), decision.reasons


def test_negation_covers_a_phrase_sharing_the_cue_word(classifier: Classifier) -> None:
    """'không có ai bị' + 'bị hack': the phrase starts on the cue's last word."""
    decision = classifier.classify(report("Không có ai bị hack tài khoản, em chỉ quên mật khẩu."))
    assert decision.category != Category.account_compromise, decision.reasons


def test_negation_does_not_reach_across_a_clause(classifier: Classifier) -> None:
    decision = classifier.classify(report("Không có ai bị đánh, nhưng bạn em nói muốn tự tử."))
    assert decision.severity == Severity.critical


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Ứng dụng học trên điện thoại cứ bị văng, không học online được.", Category.other),
        ("Có nick tên Hacker Pro vào phòng Zoom bật mic hét ầm ĩ.", Category.intrusion),
    ],
)
def test_loose_words_do_not_decide(classifier: Classifier, text: str, category: Category) -> None:
    assert classifier.classify(report(text)).category == category


def test_negated_critical_signal_is_shown_to_a_human(classifier: Classifier) -> None:
    decision = classifier.classify(report("Không có học sinh nào bị đe dọa giết, chỉ hỏi thôi."))
    assert decision.severity != Severity.critical
    assert decision.needs_review
    assert any(r.startswith("negated:") for r in decision.reasons)


def test_conditional_is_not_a_negation(classifier: Classifier) -> None:
    decision = classifier.classify(report("he said if i dont send more pics he will leak them"))
    assert decision.severity == Severity.critical
    assert decision.category == Category.sexual_exploitation


# -- spellings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Bạn ấy nói sẽ tự tử", Category.self_harm),
        ("ban ay noi se tu tu", Category.self_harm),
        ("e k muon song nua", Category.self_harm),
        ("my friend says she wants to kms", Category.self_harm),
        ("Nó dọa chém em sau giờ học", Category.threat_of_violence),
        ("no doa chem e sau gio hoc", Category.threat_of_violence),
        ("t se giet m", Category.threat_of_violence),
        ("they said they are gonna bring a knife to school", Category.threat_of_violence),
        ("Người lạ xin ảnh nóng của con tôi", Category.sexual_exploitation),
        ("ng la xin anh nong cua con toi", Category.sexual_exploitation),
        ("a stranger keeps asking my daughter for nudes", Category.sexual_exploitation),
    ],
)
def test_critical_in_any_spelling(classifier: Classifier, text: str, category: Category) -> None:
    decision = classifier.classify(report(text))
    assert decision.severity == Severity.critical, decision.reasons
    assert decision.category == category, decision.reasons


@pytest.mark.parametrize(
    ("text", "severity", "category"),
    [
        ("cả lớp tẩy chay em", Severity.high, Category.cyberbullying),
        ("ca lop tay chay em", Severity.high, Category.cyberbullying),
        ("mk lop hoc bi lo tren fb", Severity.medium, Category.credential_leak),
        ("tk zalo cua e bi hack", Severity.high, Category.account_compromise),
        ("they keep calling her fat and ugly in the group", Severity.high, Category.cyberbullying),
        ("mày cứ chờ đấy", Severity.high, Category.cyberbullying),
        ("cô giáo đánh giá bài kiểm tra chưa đúng", Severity.low, Category.other),
    ],
)
def test_non_critical_variants(
    classifier: Classifier, text: str, severity: Severity, category: Category
) -> None:
    decision = classifier.classify(report(text))
    assert (decision.severity, decision.category) == (severity, category), decision.reasons


# -- structured fields and safety bias -----------------------------------------------------


def test_immediate_danger_without_text_evidence(classifier: Classifier, policy: Policy) -> None:
    decision = classifier.classify(report("Xin gọi lại cho tôi ngay.", immediate_danger=True))
    assert decision.severity == Severity.critical
    assert decision.category == policy.classification.immediate_danger_category
    assert decision.needs_review
    assert "immediate_danger ticked" in decision.reasons


def test_immediate_danger_keeps_the_category_from_text(classifier: Classifier) -> None:
    decision = classifier.classify(report("cả lớp tẩy chay em", immediate_danger=True))
    assert decision.severity == Severity.critical
    assert decision.category == Category.cyberbullying


def test_hint_is_a_floor(classifier: Classifier) -> None:
    decision = classifier.classify(report("Như đã báo ở trên.", category_hint="cyberbullying"))
    assert (decision.severity, decision.category) == (Severity.high, Category.cyberbullying)
    assert "category_hint=cyberbullying" in decision.reasons
    lower = classifier.classify(
        report("có người lạ vào phòng zoom phát nhạc", category_hint="privacy_violation")
    )
    assert lower.severity == Severity.high


def test_text_raises_above_the_hint(classifier: Classifier) -> None:
    decision = classifier.classify(report("bạn em nói sẽ tự tử tối nay", category_hint="other"))
    assert (decision.severity, decision.category) == (Severity.critical, Category.self_harm)
    assert decision.needs_review


def test_nothing_matched_is_other_low_for_review(classifier: Classifier) -> None:
    decision = classifier.classify(report("Thứ hai tuần sau có học bù không ạ"))
    assert (decision.severity, decision.category) == (Severity.low, Category.other)
    assert decision.needs_review
    assert decision.reasons == ["no rule matched"]


def test_version_and_reasons(classifier: Classifier, policy: Policy) -> None:
    decision = classifier.classify(report("ban ay noi se tu tu zyxwv"))
    assert decision.rules_version == classifier.version == content_version(policy)
    assert "rule self_harm.intent matched 'tự tử'" in decision.reasons
    assert not any("zyxwv" in r for r in decision.reasons), "reasons must not quote the report"


# -- rule features on a small policy -------------------------------------------------------

ROUTING = """
severities:
  critical: {notify: [school, district_office, city_office, police], ack_within: 15m}
  high: {notify: [school, district_office], ack_within: 1h}
  medium: {notify: [school], ack_within: 4h}
  low: {notify: [school], ack_within: 24h}
escalation_ladder: [school, district_office, city_office, police]
"""

SMALL = (
    ROUTING
    + """
classification:
  rules:
  - id: fraud.attempt
    category: fraud
    any: [lừa đảo]
  - id: fraud.lost
    category: fraud
    severity: high
    all: [[lừa đảo], [mất tiền]]
    within: 5
  - id: bullying.words
    category: cyberbullying
    any: [chửi]
    unless: [chửi thề]
  - id: intrusion.pics
    category: intrusion
    weight: 30
    any: [hình bậy]
  - id: harmful.pics
    category: harmful_content
    weight: 20
    any: [hình bậy]
  - id: threat.danger_tick
    category: threat_of_violence
    any: [người lạ]
    when: {immediate_danger: true}
"""
)


@pytest.fixture(scope="module")
def small() -> Classifier:
    return Classifier(parse_yaml_text(SMALL, Policy, "small.yaml"))


def test_severity_override_and_within(small: Classifier) -> None:
    assert small.classify(report("tin nhắn lừa đảo")).severity == Severity.medium
    assert small.classify(report("bị lừa đảo mất tiền")).severity == Severity.high
    far = small.classify(report("bị lừa đảo, sau đó rất lâu rất lâu rất lâu mới mất tiền"))
    assert far.severity == Severity.medium


def test_unless_suppresses_a_rule(small: Classifier) -> None:
    assert small.classify(report("bạn ấy chửi em")).category == Category.cyberbullying
    assert small.classify(report("bạn ấy chửi thề suốt")).category == Category.other


def test_weight_picks_the_category(small: Classifier) -> None:
    assert small.classify(report("có hình bậy trên màn hình")).category == Category.intrusion


def test_when_condition(small: Classifier) -> None:
    plain = small.classify(report("có người lạ gọi điện"))
    assert plain.category == Category.other
    ticked = small.classify(report("có người lạ gọi điện", immediate_danger=True))
    assert ticked.category == Category.threat_of_violence
    assert ticked.severity == Severity.critical


# -- unaccented look-alikes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "severity", "category"),
    [
        # Observed: "ban" (bạn/bán) was read as "bắn" (shoot) next to an intent word.
        ("ban trong lop muon ru em choi game nhung em ko thich", Severity.low, Category.other),
        (
            "minh muon bao cao ban cung lop dang anh em len mang che bai",
            Severity.high,
            Category.cyberbullying,
        ),
        ("tui muon ban lai sach cu cho cac ban", Severity.low, Category.other),
        ("em ko dam di hoc vi bi tay chay", Severity.high, Category.cyberbullying),
        ("mai co danh sach lop moi", Severity.low, Category.other),
        ("em can tu van tam ly", Severity.low, Category.other),
        ("Mẹ em muốn ăn thịt gà", Severity.low, Category.other),
    ],
)
def test_unaccented_look_alikes_are_not_violence(
    classifier: Classifier, text: str, severity: Severity, category: Category
) -> None:
    decision = classifier.classify(report(text))
    assert (decision.severity, decision.category) == (severity, category), decision.reasons


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Nó muốn bắn em", Category.threat_of_violence),
        ("t se ban chet m", Category.threat_of_violence),
        ("no doa dam chet em", Category.threat_of_violence),
        ("thang lop ben doa danh em sau gio hoc", Category.threat_of_violence),
        ("tui no hen ra sau truong danh hoi dong em", Category.threat_of_violence),
        ("e hay cat tay", Category.self_harm),
        ("e muon nhay lau", Category.self_harm),
        ("anh ta xin anh cua em", Category.sexual_exploitation),
    ],
)
def test_threats_with_context_stay_critical(
    classifier: Classifier, text: str, category: Category
) -> None:
    decision = classifier.classify(report(text))
    assert (decision.severity, decision.category) == (Severity.critical, category), decision.reasons


READINGS = (
    ROUTING
    + """
classification:
  ambiguous_folded: [ban]
  rules:
  - id: sexual.photo_request
    category: sexual_exploitation
    all: [[anh, chú], [xin ảnh]]
    within: 6
  - id: threat.violence
    category: threat_of_violence
    all: [[muốn, sẽ], [bắn, bắn chết]]
    within: 4
"""
)


@pytest.fixture(scope="module")
def readings() -> Classifier:
    return Classifier(parse_yaml_text(READINGS, Policy, "readings.yaml"))


def test_one_token_is_not_read_as_two_words(readings: Classifier) -> None:
    # "anh" cannot be both the man (first group) and "ảnh", the photo (second group).
    assert readings.classify(report("em xin anh tien mua sach")).severity == Severity.low
    photo = readings.classify(report("anh ay xin anh cua em"))
    assert photo.severity == Severity.critical
    assert "rule sexual.photo_request matched 'anh + xin ảnh'" in photo.reasons


def test_all_groups_with_an_ambiguous_word(readings: Classifier) -> None:
    # The intent word does not tell "bắn" from "bán": each group must match on its own terms.
    assert readings.classify(report("tui muon ban sach cu")).severity == Severity.low
    assert readings.classify(report("Tôi muốn bắn nó")).severity == Severity.critical
    decision = readings.classify(report("t se ban chet m"))
    assert "rule threat.violence matched 'sẽ + bắn chết'" in decision.reasons
