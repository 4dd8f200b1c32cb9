"""Every ``dualattn ...`` command line in README.md and docs/*.md parses against the CLI.

Parse only (click's ``make_context``: options, arguments, value types; nothing runs), so a renamed or
removed option, a wrong value type or a command that does not exist fails here. Command lines come from
code blocks (fenced and indented) and from inline code spans (headings, tables, prose).
Synopsis notation is read as a user would fill it in: ``[--x A | --y B]`` -> ``--x A``, ``a|b|c`` -> ``a``,
an upper-case placeholder given to a number option -> ``1``, a trailing ``...`` dropped. Code-block lines
must parse completely; an inline span may leave out required options (it mentions a command rather than
spelling out a call; ``a / b`` there names alternatives, the first is checked), but the command must exist
and every option it names must exist and take its value.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import pytest
import typer

from dualattn.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Lines known to fail for a reason another change fixes; (file name, start of the command) -> why.
#: Empty: keep it so (the explain command's `--block 3` and its help's `ig` are fixed in cli/_explain.py).
EXPECTED_FAILURES: dict[tuple[str, str], str] = {}

_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SHELL_STOP = {"|", ">", ">>", "&&", "||", ";", "2>&1", "&"}


def _command_lines(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, kind, command)`` with kind ``block`` (a code block's line) or ``inline`` (a code span
    in a heading, a table or prose)."""
    out: list[tuple[int, str, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    fence: str | None = None
    prev_blank = True
    pending: tuple[int, str] | None = None
    for no, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if fence is None and stripped.startswith("```"):
            fence = stripped[3:].strip().lower() or "text"
            continue
        if fence is not None and stripped.startswith("```"):
            fence = None
            continue
        in_code = (fence is not None and fence not in ("python", "py", "yaml", "json", "csv")) or (
            fence is None and raw.startswith("    ") and (prev_blank or pending is not None or _is_indented_code(lines, no))
        )
        prev_blank = not stripped
        if pending is not None:  # a continued line (trailing backslash)
            start, text = pending
            text = f"{text} {stripped.rstrip(chr(92)).strip()}"
            pending = (start, text) if stripped.endswith("\\") else None
            if pending is None:
                out.append((start, "block", text))
            continue
        if in_code:
            cmd = stripped[2:] if stripped.startswith("$ ") else stripped
            if cmd.startswith("dualattn "):
                cmd = re.sub(r"\s+#.*$", "", cmd)
                if cmd.endswith("\\"):
                    pending = (no, cmd.rstrip("\\").strip())
                else:
                    out.append((no, "block", cmd))
            continue
        if fence is not None:
            continue
        for span in re.findall(r"`([^`]+)`", raw):
            if span.startswith("dualattn "):
                out.append((no, "inline", span.split(" / ")[0]))  # `dualattn data list / make`: the first
    return out


def _is_indented_code(lines: list[str], no: int) -> bool:
    """An indented line continuing an indented code block (the block's lines above are indented too)."""
    k = no - 2
    while k >= 0 and lines[k].startswith("    "):
        k -= 1
    return k < 0 or not lines[k].strip()


def _fill_synopsis(cmd: str) -> str:
    """``[--a X | --b Y]`` -> ``--a X``; ``x|y`` -> ``x``; ``...`` dropped."""
    cmd = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).split(" | ")[0], cmd)
    words = []
    for word in cmd.split():
        if word in ("...", "…"):
            continue
        if "|" in word and word not in _SHELL_STOP and not word.startswith(("'", '"')):
            word = word.split("|")[0]
        words.append(word)
    return " ".join(words)


def _argv(cmd: str) -> list[str]:
    words = shlex.split(_fill_synopsis(cmd))
    assert words[0] == "dualattn"
    argv = []
    for w in words[1:]:
        if w in _SHELL_STOP:
            break
        argv.append(w)
    return argv


#: click's errors, as Typer raises them (Typer >= 0.2x vendors click; its exceptions derive from this).
CLIError = typer.TyperException


def _is_missing(exc: Exception) -> bool:
    """A required option or argument left out (or a group named without its sub-command)."""
    return type(exc).__name__ in ("MissingParameter", "NoArgsIsHelpError")


def _make_context(command, name: str, args: list[str], parent):  # noqa: ANN001, ANN202
    """``command.make_context``; an upper-case placeholder (``K``, ``S``) refused as an option's value (a
    number option) is replaced by ``1`` and the parse retried."""
    args = list(args)
    for _ in range(len(args) + 1):
        try:
            return command.make_context(name, list(args), parent=parent)
        except CLIError as exc:
            opts = getattr(getattr(exc, "param", None), "opts", None) or []
            spots = [i + 1 for i, a in enumerate(args[:-1]) if a in opts and _PLACEHOLDER.match(args[i + 1])]
            if _is_missing(exc) or not spots:
                raise
            for i in spots:
                args[i] = "1"
    raise AssertionError("unreachable")


def parse(argv: list[str], *, allow_missing: bool = False):  # noqa: ANN201
    """Parse ``argv`` (after ``dualattn``) down to the leaf command's context; raise the CLI's error when it
    does not parse (``allow_missing``: a missing required option or argument is accepted, giving ``None``)."""
    command = typer.main.get_command(app)
    ctx = None
    name, args = "dualattn", list(argv)
    while True:
        try:
            ctx = _make_context(command, name, args, ctx)
        except CLIError as exc:
            if allow_missing and _is_missing(exc):
                return None
            raise
        if not hasattr(command, "resolve_command"):  # a leaf command
            return ctx
        with warnings.catch_warnings():  # click 8.2+ deprecates protected_args; Typer's copy keeps _protected_args
            warnings.simplefilter("ignore", DeprecationWarning)
            protected = getattr(ctx, "_protected_args", None)
            rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        if not rest:
            if allow_missing:
                return None
            raise typer.BadParameter(f"{name}: no sub-command")
        name, command, args = command.resolve_command(ctx, rest)


def _all_commands() -> list[tuple[str, int, str, str]]:
    return [(p.name, no, kind, cmd) for p in DOCS for no, kind, cmd in _command_lines(p)]


COMMANDS = _all_commands()


def test_the_docs_hold_command_lines_of_every_command():
    """The extraction finds the commands the docs show (so the test below checks something)."""
    firsts = {(cmd.split() + [""])[1] for _f, _n, _k, cmd in COMMANDS}
    assert {"train", "evaluate", "explain", "demo", "report", "data", "prepare", "models"} <= firsts, firsts
    assert len(COMMANDS) >= 30, COMMANDS


@pytest.mark.parametrize(("doc", "line", "kind", "cmd"), COMMANDS, ids=[f"{f}:{n}" for f, n, _k, _c in COMMANDS])
def test_doc_command_parses(doc, line, kind, cmd):
    why = next((w for (f, start), w in EXPECTED_FAILURES.items() if f == doc and cmd.startswith(start)), None)
    try:
        parse(_argv(cmd), allow_missing=kind == "inline")
    except CLIError as exc:
        if why is not None:
            pytest.xfail(why)
        pytest.fail(f"{doc}:{line}: `{cmd}` does not parse: {exc}")
    else:
        assert why is None, f"{doc}:{line} parses now: remove it from EXPECTED_FAILURES"


# ----------------------------------------------------------------------------- the parser itself


@pytest.mark.parametrize("argv", [
    ["train", "--data", "my_scans"],                    # the option docs/data.md used to show
    ["evaluate", "--runs", "r", "--out", "o", "--steps", "many"],  # a wrong value type
    ["prepare", "brats"],                               # missing arguments
    ["no-such-command"],
    ["data", "make", "synthetic-brain", "x", "--sizes", "3"],
])
def test_parse_refuses_what_the_cli_refuses(argv):
    with pytest.raises(CLIError):
        parse(argv)


def test_parse_accepts_and_runs_nothing(tmp_path):
    ctx = parse(["train", "--config", "paper-dual.yaml", "--print-config"])
    assert ctx.params["print_config"] is True and ctx.params["config"] == "paper-dual.yaml"
    ctx = parse(["prepare", "brats", str(tmp_path / "raw"), str(tmp_path / "out"), "--workers", "2"])
    assert ctx.params["workers"] == 2 and not (tmp_path / "out").exists()
    assert parse(["evaluate", "--runs", "x"], allow_missing=True) is None
    with pytest.raises(CLIError, match="out"):
        parse(["evaluate", "--runs", "x"])
    ctx = parse(["data", "make", "synthetic-brain", "d", "--n", "N", "--size", "S"])
    assert ctx.params["n"] == 1 and ctx.params["size"] == 1


def test_synopsis_is_filled_in_as_a_user_would():
    assert _argv("dualattn demo [--preset tiny|default|full] --out DIR") == ["demo", "--preset", "tiny", "--out", "DIR"]
    assert _argv("dualattn prepare pet RAW LABELS.csv OUT [--key-file FILE | --salt SECRET]") == [
        "prepare", "pet", "RAW", "LABELS.csv", "OUT", "--key-file", "FILE"]
    assert _argv("dualattn models --json | head") == ["models", "--json"]
    assert _command_lines(ROOT / "README.md")  # README's indented blocks are read
