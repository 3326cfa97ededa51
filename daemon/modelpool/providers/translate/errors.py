"""The one error the translation layer raises."""

from __future__ import annotations


class TranslationError(ValueError):
    """A request or response that cannot be expressed in the other API.

    ``param`` names the offending field in the *input* document (a dotted
    path such as ``messages[2].content[0].type``), or is None when the
    problem is not tied to one field. The ingress maps it to a 400.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"TranslationError({self.message!r}, param={self.param!r})"
