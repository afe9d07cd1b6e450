"""Reading import files (producers/bulk_import.py): what each line becomes, without a network."""

from __future__ import annotations

import io

import pytest

from producers.bulk_import import FileError, Line, csv_rows, format_of, import_key, json_lines
from schemas.reports import ReportIn


def test_csv_rows_become_reports_the_intake_accepts() -> None:
    text = (
        "reporter_role,school_code,description,immediate_danger,contact_name,contact_phone,"
        "evidence_urls\r\n"
        'parent,HN-BD-THCS-001,"Người lạ nhắn tin, đòi gặp riêng",có,Chị Lan,0900 000 000,'
        '"https://a.example/1 https://a.example/2"\r\n'
        "student,HN-BD-THCS-002,Lộ mật khẩu lớp học,không,,,\r\n"
    )
    lines = list(csv_rows(io.StringIO(text)))
    assert [line.number for line in lines] == [2, 3]
    first, second = (ReportIn.model_validate(line.report) for line in lines)
    assert (first.channel, first.immediate_danger, second.immediate_danger) == (
        "bulk_import",
        True,
        False,
    )
    assert first.contact is not None and first.contact.name == "Chị Lan"
    assert [str(u) for u in first.evidence_urls] == ["https://a.example/1", "https://a.example/2"]
    assert second.contact is None  # empty cells are left out, not sent as ""


def test_a_quoted_cell_over_several_lines_keeps_the_line_count_of_the_file() -> None:
    text = 'school_code,description\nA1,"dòng một\ndòng hai"\nA2,một dòng\n'
    assert [line.number for line in csv_rows(io.StringIO(text))] == [3, 4]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("A1,mô tả,maybe\n", "immediate_danger: 'maybe' is neither yes nor no"),
        ("A1,mô tả,có,thừa\n", "more cells than the header has columns"),
    ],
)
def test_a_row_that_cannot_be_read_is_refused_alone(row: str, reason: str) -> None:
    text = "school_code,description,immediate_danger\n" + row + "A2,bình thường,không\n"
    lines = list(csv_rows(io.StringIO(text)))
    assert lines[0] == Line(2, error=reason)
    assert lines[1].report is not None


def test_an_unknown_column_refuses_the_file_naming_it() -> None:
    with pytest.raises(FileError, match=r"line 1: unknown column\(s\) 'desciption'"):
        list(csv_rows(io.StringIO("school_code,desciption\nA1,x\n")))
    with pytest.raises(FileError, match="no header row"):
        list(csv_rows(io.StringIO("")))


def test_json_lines_accept_a_report_or_a_wrapped_one_and_name_bad_lines() -> None:
    text = '{"school_code": "A1"}\n\n{"report": {"school_code": "A2"}}\nnope\n[1]\n'
    lines = list(json_lines(io.StringIO(text)))
    assert [(line.number, line.report) for line in lines[:2]] == [
        (1, {"school_code": "A1"}),
        (3, {"school_code": "A2"}),
    ]
    assert lines[2].number == 4 and (lines[2].error or "").startswith("not JSON")
    assert lines[3] == Line(5, error="not a JSON object describing one report")


def test_the_key_is_the_content_whatever_the_order_of_fields() -> None:
    a = {"school_code": "A1", "description": "Người lạ"}
    assert import_key(a) == import_key(dict(reversed(list(a.items()))))
    assert import_key(a) != import_key({**a, "description": "Người lạ."})
    assert len(import_key(a)) <= 255


def test_the_format_comes_from_the_name_unless_given() -> None:
    assert (format_of("log.CSV", None), format_of("a.jsonl", None), format_of("-", None)) == (
        "csv",
        "jsonl",
        "jsonl",
    )
    assert format_of("export.txt", "csv") == "csv"
