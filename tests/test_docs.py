"""The documentation: the site builds strictly, and every ``qlit`` command the README and ``docs/`` show still parses.

Each command runs in this process as ``main([...args, "--print_config"])`` (``--help`` lines as they are): the parser
checks every option name and value against the current code, and exits with status 0 before anything is built or
written. What is not checked, and why:

- transcripts (``$ qlit ...``): they show what qlit prints, some for deliberately wrong input;
- commands with placeholders (``...``, ``<head-ip>``, ``$VAR``): there is nothing to parse in their place;
- ``--config`` files outside ``configs/`` that are not there (``lightning_logs/genomic/fold_2/config.yaml``): an
  earlier run writes them. A ``configs/...`` path must exist.

``--ckpt_path best|last`` stays in the command: ``--print_config`` exits before qlit looks for the checkpoint, so it
parses without a run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OPERATORS = {"&&", "||", ";", "|"}  # a command line ends at these; a redirection (`>`) ends its arguments


def fenced_lines(text: str):
    """(line number, line) of every line inside a fenced code block, a ``\\``-continued line joined to the next."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not inside:
            inside = stripped.startswith("```")
            continue
        if stripped == "```":
            inside = False
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def qlit_arguments(tokens: list[str]) -> list[str] | None:
    """The arguments of the qlit command in one shell command (``qlit``, ``.venv/bin/qlit``, ``... -m qlit``)."""
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # RAY_ADDRESS=... qlit cv ...
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] in ("qlit", ".venv/bin/qlit"):
        arguments = tokens[1:]
    elif "-m" in tokens[:-1] and tokens[tokens.index("-m") + 1] == "qlit":  # torchrun ... -m qlit fit ...
        arguments = tokens[tokens.index("-m") + 2 :]
    else:
        return None
    return arguments[: arguments.index(">")] if ">" in arguments else arguments


def placeholder(arguments: list[str]) -> str | None:
    for argument in arguments:
        if "..." in argument or "…" in argument or "$" in argument or re.search(r"<[\w-]+>", argument):
            return argument
    return None


def documented_commands() -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]]]:
    """Every qlit command in a fenced block: (where, arguments) to check, (where, why) for those left out."""
    checked: dict[tuple[str, ...], list[str]] = {}
    left_out: list[tuple[str, str]] = []
    for page in PAGES:
        name = page.relative_to(REPO).as_posix()
        for number, line in fenced_lines(page.read_text(encoding="utf-8")):
            where = f"{name}:{number}"
            if not re.search(r"(^|[\s/])qlit\s", line):
                continue
            if line.startswith("$ "):
                left_out.append((where, "transcript"))
                continue
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as err:  # unbalanced quotes: a broken command if it is one
                tokens = line.split()
                if qlit_arguments(tokens) is not None:
                    pytest.fail(f"{where}: cannot split `{line}` as a shell line ({err})")
                continue
            commands, current = [], []
            for token in tokens:
                if token in OPERATORS:
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            commands.append(current)
            for command in commands:
                arguments = qlit_arguments(command)
                if arguments is None:
                    continue
                if (word := placeholder(arguments)) is not None:
                    left_out.append((where, f"placeholder {word}"))
                    continue
                config = arguments[arguments.index("--config") + 1] if "--config" in arguments[:-1] else None
                if config and not config.startswith("configs/") and not (REPO / config).exists():
                    left_out.append((where, f"{config} is written by an earlier run"))
                    continue
                checked.setdefault(tuple(arguments), []).append(where)
    return [(", ".join(places), list(arguments)) for arguments, places in checked.items()], left_out


COMMANDS, LEFT_OUT = documented_commands()


def test_the_pages_show_commands():
    """The extraction finds the commands (a change to it that finds none would pass every check below)."""
    pages = {where.split(":")[0] for places, _ in COMMANDS for where in places.split(", ")}
    assert {"README.md", "docs/getting-started.md", "docs/cross-validation.md", "docs/tuning.md"} <= pages, pages
    assert len(COMMANDS) >= 30, COMMANDS
    assert len(LEFT_OUT) <= 12, LEFT_OUT


@pytest.mark.parametrize("where, arguments", COMMANDS, ids=[where.split(", ")[0] for where, _ in COMMANDS])
def test_documented_command_parses(where, arguments, monkeypatch, capsys):
    from qlit.cli import main

    monkeypatch.chdir(REPO)  # the commands name configs/... relative to the repository
    shown = "qlit " + shlex.join(arguments)
    if not {"--help", "-h", "--print_config"} & set(arguments):
        arguments = [*arguments, "--print_config"]
    with pytest.raises(SystemExit) as stop:
        main(arguments)
    output = capsys.readouterr()
    assert stop.value.code in (0, None), (
        f"{where}: `{shown}` no longer parses (exit status {stop.value.code}):\n{output.err.strip()}"
    )


def test_readme_links_to_docs_resolve():
    """mkdocs checks the links between pages; the README's links into docs/ are checked here."""
    from markdown.extensions.toc import slugify

    text = (REPO / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        page = REPO / path
        assert page.is_file(), f"README.md links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
            slugs = {slugify(heading, "-") for heading in headings}  # the ids mkdocs gives headings
            assert anchor in slugs, f"README.md links to {target}: {path} has no heading #{anchor}"


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: every page in the nav, no broken link or anchor (mkdocs.yml's `validation`)."""
    import importlib.util

    missing = "mkdocs-material is not installed: pip install -c requirements-lock.txt -e '.[test]'"
    assert importlib.util.find_spec("material"), missing
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2.0
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        check=False, capture_output=True, text=True, timeout=120, env=environment,
    )  # fmt: skip
    log = build.stdout + build.stderr
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    for page in (REPO / "docs").glob("*.md"):
        built = tmp_path / "site" / ("" if page.stem == "index" else page.stem) / "index.html"
        assert built.is_file(), f"{page.name} was not built"
