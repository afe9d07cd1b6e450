"""A small run of the pipeline benchmark (bench/pipeline_bench.py, `make bench-pipeline`) on the
test broker: raw kafka-python, Alertmanager and the pipeline all run, every report and alert is
mailed, and the result file holds the figures and ratios the full run publishes.

Only structure and sanity are checked, never speed: the machine is shared and small.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

TIMEOUT_S = 240  # the run takes about a minute on an idle machine

# Room for the run's own time limit and for its cleanup after it.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(TIMEOUT_S + 180)]

BURST = 40
STEADY_RATE = 5
STEADY_SECONDS = 5
RAW = 2000
COMPONENTS = {"intake", "processors", "grouper", "escalator", "notifier", "audit"}


@pytest.fixture(scope="module")
def bench_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "pipeline.json"
    args = [
        sys.executable,
        str(REPO / "bench" / "pipeline_bench.py"),
        f"--bootstrap={kafka_bootstrap}",
        f"--burst={BURST}",
        f"--steady-rate={STEADY_RATE}",
        f"--steady-seconds={STEADY_SECONDS}",
        f"--raw={RAW}",
        "--idle-seconds=2",
        # A pipeline that stopped delivering fails the run in half a minute, not at the timeout.
        "--stall-seconds=30",
        f"--out={out}",
    ]
    with subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: the benchmark then stops `escalate up` and Alertmanager.
            proc.terminate()
            _, stderr = proc.communicate(timeout=120)
            pytest.fail(f"the benchmark took over {TIMEOUT_S} s:\n{stderr[-4000:]}")
    # 1: the run finished but something was never mailed; the tests below say what.
    assert proc.returncode in (0, 1) and out.exists(), stderr[-4000:]
    out.with_suffix(".log").write_text(stderr, "utf-8")
    return out


@pytest.fixture(scope="module")
def result(bench_run: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(bench_run.read_text("utf-8"))
    return loaded


def _sane_spread(spread: dict[str, Any], n: int) -> None:
    assert spread["n"] == n
    assert 0 < spread["p50"] <= spread["p99"] <= spread["max"]


def test_raw_kafka_python_produces_and_consumes_every_message(result: dict[str, Any]) -> None:
    raw = result["raw_kafka"]
    assert raw["messages"] == RAW
    assert raw["produce"]["failed"] == 0
    assert raw["consume"]["consumed"] == RAW
    assert raw["produce_msg_per_s"] > 0 and raw["consume_msg_per_s"] > 0
    assert raw["message_bytes_avg"] > 200  # the size of a report, not an empty record


@pytest.mark.parametrize("peer", ["pipeline", "alertmanager"])
def test_every_request_of_the_burst_is_mailed_and_critical_ones_are_counted(
    result: dict[str, Any], peer: str
) -> None:
    burst = result[peer]["burst"]
    counts = (burst["sent"], burst["accepted"], burst["mailed"])
    assert counts == (BURST, BURST, BURST), f"never mailed: {burst['missing_ids']}"
    critical = burst["critical"]
    assert critical["sent"] == 2  # 5% of 40, spread through the burst
    assert critical["mailed"] == critical["sent"]
    _sane_spread(burst["latency_s"], BURST)
    _sane_spread(burst["critical"]["latency_s"], critical["sent"])
    _sane_spread(burst["accept_latency_s"], BURST)
    assert burst["mails_per_s"] > 0 and burst["requests_per_s_end_to_end"] > 0
    assert burst["all_mails"] >= BURST
    assert burst["cpu_s_per_request"] > 0


def test_the_pipeline_classified_the_critical_reports_as_critical(result: dict[str, Any]) -> None:
    critical = result["pipeline"]["burst"]["critical"]
    assert critical["mailed_as_critical"] == critical["sent"]


@pytest.mark.parametrize("peer", ["pipeline", "alertmanager"])
def test_the_steady_rate_is_offered_and_mailed(result: dict[str, Any], peer: str) -> None:
    [steady] = result[peer]["steady"]
    assert steady["offered_per_s"] == STEADY_RATE
    assert steady["sent"] == STEADY_RATE * STEADY_SECONDS
    assert steady["missing"] == 0 and steady["refused"] == 0
    _sane_spread(steady["latency_s"], steady["sent"])
    assert isinstance(steady["backlog_grew"], bool)
    assert steady["first_tenth_p50_s"] is not None and steady["last_tenth_p50_s"] is not None


def test_cpu_is_counted_for_each_component_and_for_alertmanager(result: dict[str, Any]) -> None:
    assert set(result["pipeline"]["burst"]["cpu_s"]) >= COMPONENTS
    assert "alertmanager" in result["alertmanager"]["burst"]["cpu_s"]
    for peer in ("pipeline", "alertmanager"):
        assert result[peer]["idle"]["cpu_s_per_s"] >= 0
        assert all(v >= 0 for v in result[peer]["burst"]["cpu_s"].values())


def test_the_kafka_backlog_of_each_stage_is_taken_when_sending_ends(
    result: dict[str, Any],
) -> None:
    for phase in [result["pipeline"]["burst"], *result["pipeline"]["steady"]]:
        lag = phase["consumer_lag_when_sending_ended"]
        assert set(lag) >= COMPONENTS - {"intake"}  # the intake is no consumer
        assert all(isinstance(v, int) and v >= 0 for v in lag.values())
    assert result["alertmanager"]["burst"]["consumer_lag_when_sending_ended"] is None


def test_ratios_and_targets_are_computed(result: dict[str, Any]) -> None:
    ratios = result["ratios"]
    for figure in (
        "burst_mails_per_s",
        "burst_requests_per_s_end_to_end",
        "burst_latency_p99",
        "burst_critical_latency_p99",
        "burst_accepted_per_s",
        "burst_cpu_s_per_request",
    ):
        assert ratios[figure]["pipeline_over_alertmanager"] > 0, figure
    assert ratios["burst_mails_per_s"]["pipeline_over_raw_consume"] > 0
    assert ratios["burst_accepted_per_s"]["pipeline_over_raw_produce"] > 0
    [steady] = ratios["steady"]
    assert steady["latency_p99_pipeline_over_alertmanager"] > 0
    assert len(result["targets"]) == 3
    assert all(isinstance(t["met"], bool) for t in result["targets"])


def test_the_run_is_ok(result: dict[str, Any], bench_run: Path) -> None:
    assert result["ok"] is True, bench_run.with_suffix(".log").read_text("utf-8")[-4000:]


def test_the_markdown_table_is_written_beside_the_json(bench_run: Path) -> None:
    table = bench_run.with_suffix(".md").read_text("utf-8")
    assert "| figure | pipeline | Alertmanager | raw kafka-python |" in table
    assert "mails/s delivered in the burst" in table
    assert f"steady {STEADY_RATE}/s for {STEADY_SECONDS} s" in table
