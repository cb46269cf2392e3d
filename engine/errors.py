"""The one error type for mistakes a person can make (bad file, bad field, unsupported choice)."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input: says what is wrong, where, and what to do.

    The CLI prints it as `error: <message>` and the window shows it as a dialog; neither shows a
    traceback, because the person can fix it without reading code.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f" — {self.fix}"
        return text


class ResumeRefused(UserError):
    """A resume refused once its data was read (it would train nothing): the run is left as it was — `run`
    takes back what the session logged, and its spec is not saved."""


def a_or_an(word: str) -> str:
    """'a LoRA', 'an IA3', 'an Adapter (Houlsby)', 'an HRA', 'a UniPELT': the article by the first sound —
    an initialism's letter name (F, H, L, M, N, R, S, X begin with a vowel), else the letter, U as in 'unit'."""
    initialism = word[:2].isupper()
    vowel = word[:1].upper() in ("AEFHILMNORSX" if initialism else "AEIO")
    return f"{'an' if vowel else 'a'} {word}"
