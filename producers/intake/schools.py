"""Finding a school by what a reporter knows: its name, with or without accents, or its code.

Pupils and parents rarely know a school's code ("HN-BD-THCS-001"); they know "Phan Chu Trinh",
typed as "phan chu trinh" or "THCS Phan Chu Trinh Ba Dinh". The web form's suggestions, its
no-JavaScript fallback and the chat bots all ask this one finder. Only names, codes and
districts come out of it, never the directory's addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from schemas.directory import Directory
from schemas.text import fold

#: below this a candidate is not shown at all (0..100, rapidfuzz's scale)
MIN_SCORE = 70.0
#: a query naming one school this well is taken without asking
SURE = 90.0
#: ... as long as the next candidate is this far behind
CLEAR_LEAD = 10.0
#: the district named in the query as well: enough to tell same-named schools apart
DISTRICT_BONUS = CLEAR_LEAD
#: words that say what kind of place it is; they match too many schools to count
_KIND_WORDS = frozenset(
    {
        *("truong", "th", "thcs", "thpt", "tieu", "hoc", "trung", "co", "so"),
        *("pho", "thong", "lien", "cap", "quan", "huyen", "thi", "xa"),
    }
)


#: the school code of a report whose school nobody could find: like any code outside the
#: directory, it is routed to the city office's intake desk
UNKNOWN_SCHOOL = "UNKNOWN"
_CODE_SHAPE = re.compile(r"^[A-Za-z]{1,6}(?:[-_.][A-Za-z0-9]+)+$")


def looks_like_code(text: str) -> bool:
    """ "HN-BD-THCS-001" is a code even when the directory lacks it; "Phan Chu Trinh" is not."""
    return bool(_CODE_SHAPE.match(text.strip())) and any(ch.isdigit() for ch in text)


@dataclass(frozen=True, slots=True)
class SchoolMatch:
    code: str
    name: str
    district: str
    #: how well the query names it: 100 for the name exactly, plus ``DISTRICT_BONUS`` when
    #: the query names the district as well
    score: float


def _core(text: str) -> str:
    """Folded, lower-case words without the kind words: "Trường THCS Phan Chu Trinh" is
    "phan chu trinh", and so is "truong thcs phan chu trinh"."""
    words = re.findall(r"[0-9a-z]+", fold(text).casefold())
    return " ".join(w for w in words if w not in _KIND_WORDS)


class SchoolFinder:
    def __init__(self, directory: Directory) -> None:
        self._schools: list[SchoolMatch] = []
        self._by_code: dict[str, SchoolMatch] = {}
        for district in directory.districts:
            for school in district.schools:
                entry = SchoolMatch(school.code, school.name, district.name, 100.0)
                self._schools.append(entry)
                self._by_code[school.code.upper()] = entry
        self._names = [_core(s.name) for s in self._schools]
        self._districts = [frozenset(_core(s.district).split()) for s in self._schools]

    def __len__(self) -> int:
        return len(self._schools)

    def by_code(self, code: str) -> SchoolMatch | None:
        return self._by_code.get(code.strip().upper())

    def search(self, query: str, limit: int = 8) -> list[SchoolMatch]:
        """The best candidates, best first; an exact code is the only answer.

        The name decides (token set similarity, so extra words such as the district do not
        count against it, and a typo costs a little); the district, when the query names it
        too, only adds a bonus. A query that is only a district or only "trường THCS" names
        no school and finds none.
        """
        exact = self.by_code(query)
        if exact is not None:
            return [exact]
        core = _core(query)
        if not core:
            return []
        words = frozenset(core.split())
        scores: list[tuple[float, int]] = []
        for _, score, index in process.extract(
            core, self._names, scorer=fuzz.token_set_ratio, limit=None, score_cutoff=MIN_SCORE
        ):
            district_words = self._districts[index]
            # The district's words in the query are not evidence for the name.
            if district_words and district_words <= words:
                rest = " ".join(w for w in core.split() if w not in district_words)
                if not rest:
                    continue
                score = fuzz.token_set_ratio(rest, self._names[index])
                if score < MIN_SCORE:
                    continue
                score += DISTRICT_BONUS
            scores.append((float(score), index))
        scores.sort(key=lambda item: (-item[0], self._schools[item[1]].name))
        return [
            SchoolMatch(s.code, s.name, s.district, round(score, 1))
            for score, index in scores[:limit]
            for s in (self._schools[index],)
        ]

    def resolve(self, query: str) -> tuple[SchoolMatch | None, list[SchoolMatch]]:
        """(the school, []) when the query names one clearly; (None, candidates) otherwise."""
        found = self.search(query)
        if not found or found[0].score < SURE:
            return None, found
        if len(found) == 1 or found[0].score - found[1].score >= CLEAR_LEAD:
            return found[0], []
        return None, found
