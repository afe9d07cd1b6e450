"""Throughput of ``Classifier.classify`` (and of the learned model beside it) on generated reports.

The pipeline classifies every report as it arrives, so the per-report cost bounds how fast a
backlog (say after an outage) clears. Reports are assembled from fragments in all three styles
(Vietnamese with and without accents, chat shorthand, English) with filler, so lengths and
match patterns vary. Run: ``make bench`` or ``.venv/bin/python bench/classify_bench.py [N]``.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from schemas.policy import Policy
from schemas.reports import ReportIn
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification.engine import Classifier
from stream_processors.classification.model import load
from stream_processors.classification.second_opinion import Judge

POLICY_FILE = Path(__file__).resolve().parents[1] / "escalate" / "defaults" / "policy.yaml"
MODEL_FILE = POLICY_FILE.with_name("model.npz")

FRAGMENTS = [
    "Có người lạ vào phòng Zoom phát nhạc ồn ào",
    "co nguoi la vao phong zoom phat nhac on ao",
    "bạn ấy nói sẽ tự tử nếu bị mắng",
    "ban ay noi se tu tu neu bi mang",
    "e bi may dua lop tren doa danh hoi dong",
    "mk lop hoc bi lo tren fb roi",
    "Mật khẩu và mã phòng học bị đăng lên nhóm công khai",
    "a stranger keeps asking my daughter for photos and wants to meet",
    "Someone posted our class meeting ID and passcode online",
    "the learning portal keeps logging my son out",
    "Em bị các bạn trong lớp tẩy chay và nói xấu",
    "tk zalo cua e bi hack roi",
    "Phụ huynh bị lừa chuyển 3 triệu cho người giả danh giáo viên",
    "Không có học sinh nào gặp nguy hiểm, chỉ là lỗi mạng",
    "nhom lop co link ca do bong da",
    "Xin hỏi lịch học tuần sau của lớp 9",
]
FILLER_TEXT = (
    "hôm nay trong giờ học các em đã được nhắc nhở nhiều lần nhưng tình hình vẫn vậy "
    "today after class my kid told me about it and we are worried please help"
)
FILLER = FILLER_TEXT.split(" ")


def generate(count: int, seed: int = 7) -> list[ReportIn]:
    """Deterministic mix of fragments and filler, 5 to 80 words each."""
    rng = random.Random(seed)
    reports = []
    for _ in range(count):
        parts = rng.sample(FRAGMENTS, rng.randint(1, 3))
        words = " ".join(parts).split()
        words += rng.choices(FILLER, k=rng.randint(0, 40))
        reports.append(
            ReportIn(
                channel="app",
                reporter_role="parent",
                school_code="HN-BENCH-001",
                description=" ".join(words),
                immediate_danger=rng.random() < 0.02,
            )
        )
    return reports


def main(argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 else 100_000
    policy = load_yaml_model(POLICY_FILE, Policy)
    started = time.perf_counter()
    classifier = Classifier(policy)
    build_ms = (time.perf_counter() - started) * 1000
    reports = generate(count)
    started = time.perf_counter()
    for report in reports:
        classifier.classify(report)
    elapsed = time.perf_counter() - started
    print(f"classifier built in {build_ms:.1f} ms ({len(policy.classification.rules)} rules)")
    print(
        f"{count} reports in {elapsed:.2f} s: {count / elapsed:,.0f} reports/s, "
        f"{elapsed / count * 1e6:.1f} µs/report"
    )
    # The model beside the rules, on the same reports, one core; then what the processors run:
    # the Judge (rules, the model at the policy's threshold, and combining the two).
    started = time.perf_counter()
    model = load(MODEL_FILE)
    load_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for report in reports:
        model.predict(report.description)
    model_elapsed = time.perf_counter() - started
    judge = Judge(classifier, model)
    started = time.perf_counter()
    for report in reports:
        judge.classify(report)
    judge_elapsed = time.perf_counter() - started
    print(f"model {model.model_version} loaded in {load_ms:.1f} ms")
    print(
        f"{'':>10}{'rules':>14}{'model':>14}{'combined':>14}\n"
        f"{'µs/report':>10}{elapsed / count * 1e6:>14.1f}{model_elapsed / count * 1e6:>14.1f}"
        f"{judge_elapsed / count * 1e6:>14.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
