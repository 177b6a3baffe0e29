"""Problems found by a model's cross-field checks, each tied to the key it concerns.

A pydantic model validator can only say "this model is wrong"; raising ``KeyProblems``
instead lets the loader name the key inside the model (``quality.completeness_fail``,
``devices[inv-02].connection``) and report every problem of the model at once.
"""

from __future__ import annotations

Loc = tuple[str | int, ...]


class KeyProblems(ValueError):
    """``(loc, message)`` pairs, ``loc`` relative to the model that raises them."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


def raise_problems(problems: list[tuple[Loc, str]]) -> None:
    if problems:
        raise KeyProblems(problems)
