"""Finding a school by name (producers/intake/schools.py), as pupils and parents type it."""

from __future__ import annotations

import pytest

from escalate.settings import DEFAULT_CONFIG_DIR
from producers.intake.schools import SchoolFinder
from schemas.directory import Directory
from schemas.yaml_loader import load_yaml_model


def office(name: str) -> dict[str, object]:
    return {"name": name, "emails": ["x@example.org"]}


def school(code: str, name: str) -> dict[str, object]:
    return {"code": code, "name": name, "leadership_emails": ["bgh@example.org"]}


# Same-named schools in two districts, as a real city has them.
CITY = Directory.model_validate(
    {
        "city_office": {**office("Sở"), "intake_desk_emails": ["desk@example.org"]},
        "police": office("Công an"),
        "districts": [
            {
                "code": "BD",
                "name": "Quận Ba Đình",
                "office": office("Phòng BĐ"),
                "police": office("CA BĐ"),
                "schools": [
                    school("BD-1", "Trường THCS Nguyễn Trãi"),
                    school("BD-2", "Trường THCS Phan Chu Trinh"),
                ],
            },
            {
                "code": "HD",
                "name": "Quận Hà Đông",
                "office": office("Phòng HĐ"),
                "police": office("CA HĐ"),
                "schools": [
                    school("HD-1", "Trường THCS Nguyễn Trãi"),
                    school("HD-2", "Trường Tiểu học Văn Yên"),
                ],
            },
        ],
    }
)


@pytest.fixture
def finder() -> SchoolFinder:
    return SchoolFinder(CITY)


@pytest.mark.parametrize(
    "query",
    [
        "Phan Chu Trinh",
        "phan chu trinh",  # without accents
        "THCS Phan Chu Trinh",
        "truong thcs phan chu trinh ba dinh",
        "phan chu trih",  # a typo
        "bd-2",  # the code, any case
    ],
)
def test_a_query_that_names_one_school_resolves_to_it(finder: SchoolFinder, query: str) -> None:
    school, candidates = finder.resolve(query)
    assert (school and school.code, candidates) == ("BD-2", [])


def test_same_named_schools_are_offered_with_their_districts_until_one_is_named(
    finder: SchoolFinder,
) -> None:
    school, candidates = finder.resolve("nguyen trai")
    assert school is None
    assert sorted((c.code, c.district) for c in candidates) == [
        ("BD-1", "Quận Ba Đình"),
        ("HD-1", "Quận Hà Đông"),
    ]
    school, _ = finder.resolve("Nguyễn Trãi Hà Đông")
    assert school is not None and school.code == "HD-1"
    school, _ = finder.resolve("nguyen trai quan ba dinh")
    assert school is not None and school.code == "BD-1"


@pytest.mark.parametrize(
    "query", ["", "   ", "trường THCS", "thcs", "Quận Hà Đông", "xyz", "chu van an"]
)
def test_a_query_that_names_no_school_finds_none(finder: SchoolFinder, query: str) -> None:
    assert finder.search(query) == []
    assert finder.resolve(query) == (None, [])


def test_every_school_of_the_shipped_directory_is_found_by_its_name_without_accents() -> None:
    from schemas.text import fold

    directory = load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory)
    finder = SchoolFinder(directory)
    assert len(finder) == sum(len(d.schools) for d in directory.districts) > 0
    for district in directory.districts:
        for entry in district.schools:
            school, _ = finder.resolve(f"{fold(entry.name).lower()} {fold(district.name)}")
            assert school is not None and school.code == entry.code, entry.name
