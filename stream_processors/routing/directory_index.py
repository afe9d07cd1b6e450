"""Fast look-ups into the directory of schools and recipients."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.directory import Directory, District, School


@dataclass(frozen=True)
class SchoolPlace:
    school: School
    district: District


class DirectoryIndex:
    """Built once per directory version; school codes compare case-insensitively."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._schools: dict[str, SchoolPlace] = {}
        for district in directory.districts:
            for school in district.schools:
                self._schools[school.code.upper()] = SchoolPlace(school, district)

    def find(self, school_code: str) -> SchoolPlace | None:
        return self._schools.get(school_code.upper())

    def __contains__(self, school_code: str) -> bool:
        return school_code.upper() in self._schools
