"""``escalate classify train`` and ``escalate classify --evaluate FILE --model PATH``.

The model trains on the labelled corpora in ``tests/data`` plus any reviewed exports, and never on
``tests/data/untuned``: those batches are the blind measure of what neither the rules nor the
model were shaped on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from schemas.policy import Policy
from stream_processors.classification.batch import BadLine, _numbered, parse_labelled
from stream_processors.classification.compare import compare, cross_validate, examples, render
from stream_processors.classification.evaluate import LabelledReport
from stream_processors.classification.model import ModelError, load, train

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
TRAINING_CORPORA = tuple(
    DATA / name
    for name in (
        "reports-generalisation.jsonl",
        "reports-adversarial.jsonl",
        "reports-heldout.jsonl",
        "reports-dev.jsonl",
    )
)
DEFAULT_MODEL = ROOT / "escalate" / "defaults" / "model.npz"


def read_labelled(path: Path) -> list[LabelledReport]:
    """Every row of a labelled file; a bad row stops training (a model must not skip data)."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in _numbered(fh):
            try:
                rows.append(parse_labelled(line, number))
            except BadLine as exc:
                raise BadLine(f"{path}:{number}: {exc}") from None
    return rows


def _refuse_blind(path: Path) -> None:
    if "untuned" in path.resolve().parts:
        raise BadLine(f"{path}: untuned batches are blind test data, never training data")


def train_command(
    extra: Sequence[Path], out: Path, seed: int, cv: bool, policy: Policy, stdout: TextIO
) -> int:
    paths = [*TRAINING_CORPORA, *extra]
    rows: list[LabelledReport] = []
    corpora: dict[str, str] = {}
    for path in paths:
        try:
            _refuse_blind(path)
            rows += read_labelled(path)
        except (BadLine, OSError, UnicodeDecodeError) as exc:
            stdout.write(f"refused: {exc}\n")
            return 2
        name = path.name if path.parent == DATA else str(path)
        corpora[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        stdout.write(f"corpus {name}: sha256 {corpora[name]}\n")
    stdout.write(f"{len(rows)} labelled reports, seed {seed}\n")
    if cv:
        stdout.write(render(cross_validate(rows, policy, seed), "5-fold cross-validation"))
    model = train(examples(rows), seed, corpora)
    version = model.save(out)
    size = out.stat().st_size
    stdout.write(f"wrote {out} ({size:,} bytes), model version {version}\n")
    return 0


def compare_file(path: Path, model_path: Path, policy: Policy, stdout: TextIO) -> int:
    """Rules, model and the combination on one labelled file; 1 if a critical is missed."""
    try:
        model = load(model_path)
        rows = read_labelled(path)
    except (ModelError, BadLine, OSError, UnicodeDecodeError) as exc:
        stdout.write(f"{exc}\n")
        return 1
    result = compare(rows, policy, lambda _i: model)
    stdout.write(f"model version {model.model_version}\n")
    stdout.write(render(result, str(path)))
    return 0 if result.tallies["combined"].critical_recall == 1.0 else 1
