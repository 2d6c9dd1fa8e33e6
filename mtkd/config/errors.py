"""Option errors that name the offending key, its place in the file and how to fix it."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from mtkd.utils.errors import MtkdError


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt ``name`` (or None when nothing is close)."""
    matches = difflib.get_close_matches(str(name), sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def format_location(location: Iterable) -> str:
    """``('train', 'optim_g', 'lr')`` → ``train.optim_g.lr``."""
    return '.'.join(str(part) for part in location) or '<top level>'


class OptionProblem:
    """One problem in an option file: where it is and what to do."""

    def __init__(self, location: Iterable, message: str):
        self.location = tuple(location)
        self.message = message

    def __str__(self) -> str:
        return f'{format_location(self.location)}: {self.message}'

    def __repr__(self) -> str:
        return f'OptionProblem({str(self)!r})'


class OptionError(MtkdError, ValueError):
    """An option file that cannot be used; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[OptionProblem], source: str = ''):
        self.problems = problems
        self.source = source
        where = f' in {source}' if source else ''
        lines = [f'{len(problems)} problem(s){where}:'] + [f'  - {problem}' for problem in problems]
        super().__init__('\n'.join(lines))
