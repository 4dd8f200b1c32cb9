"""The CLI's one error handler: a user error becomes ``error: <message>`` on stderr and exit code 2.

User errors are what the library raises for bad input: ``ValueError`` (``DataError``,
``WeightsError`` and every argument check are ``ValueError`` subclasses), ``FileNotFoundError`` and
``FileExistsError``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NoReturn

import typer

__all__ = ["USER_ERRORS", "fail", "user_errors"]

#: Exceptions reported as a one-line error with exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)


def fail(message: object) -> NoReturn:
    """Print ``error: message`` to stderr and exit with code 2."""
    typer.echo(f"{typer.style('error:', fg='red')} {message}", err=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Report :data:`USER_ERRORS` (and ``extra``) raised inside as :func:`fail` does.

    Works as a context manager and as a decorator of a command function.

    Example:
        >>> @app.command("train")  # doctest: +SKIP
        ... @user_errors()
        ... def train(...): ...
    """
    try:
        yield
    except (*USER_ERRORS, *extra) as exc:
        fail(exc)
