"""The documentation stays honest: every ``medgan`` command it shows parses, every relative link resolves.

Commands are taken from the fenced code blocks of the README, ``docs/``, ``k8s/`` and ``bench/`` Markdown files: a
line (continuations joined) whose shell command starts with ``medgan``, ``.venv/bin/medgan`` or another path ending in
``/medgan``, also after a ``$`` prompt, environment assignments, ``&&`` or ``;``. Each is parsed by the real argparse
parser of ``pipeline/cli.py`` (nothing is run) and, where it takes ``--preset`` / ``--set``, its configuration is
resolved, so an unknown key or a bad value fails here rather than in a reader's terminal.

Links are Markdown links ``[text](target)`` outside code; a relative target must exist, and an anchor into a Markdown
file must match one of its headings (GitHub's slugs).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.config import resolve
from pipeline.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOC_GLOBS = ("README.md", "docs/**/*.md", "k8s/**/*.md", "bench/**/*.md")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SEPARATORS = {";", "&&", "||", "|", "&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def doc_files() -> list[Path]:
    """The Markdown files whose commands and links are checked."""
    found = {p for pattern in DOC_GLOBS for p in REPO.glob(pattern) if ".venv" not in p.parts}
    return sorted(found)


@dataclass(frozen=True)
class Command:
    """A ``medgan`` command line shown in a document."""

    source: str  # path:line, for the failure message
    argv: tuple[str, ...]  # the arguments after ``medgan``

    def __str__(self) -> str:
        return f"{self.source}: medgan {shlex.join(self.argv)}"


def code_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the lines inside fenced code blocks, continuation lines joined."""
    out: list[tuple[int, str]] = []
    fence = ""
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match and (not fence or match.group(1) == fence):
            fence = "" if fence else match.group(1)
            pending = None
            continue
        if not fence:
            continue
        if pending:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        out.append((number, line))
    return out


def medgan_commands(text: str, name: str) -> list[Command]:
    """Every ``medgan`` invocation in the fenced code blocks of ``text``."""
    commands = []
    for number, line in code_lines(text):
        line = re.sub(r"^\s*\$\s+", "", line)
        if not re.search(r"(^|[\s;&|/])medgan(\s|$)", line):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                segment.append(token)
                continue
            while segment and ASSIGNMENT.match(segment[0]):
                segment.pop(0)
            if segment and (segment[0] == "medgan" or segment[0].endswith("/medgan")):
                commands.append(Command(f"{name}:{number}", tuple(segment[1:])))
            segment = []
    return commands


class CommandRejected(Exception):
    """A documented command that the CLI would refuse."""


def check_command(argv: tuple[str, ...] | list[str]) -> None:
    """Parse ``argv`` with the real ``medgan`` parser and resolve its config; :class:`CommandRejected` if refused."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse reports the problem on stderr and exits 2
        raise CommandRejected(f"medgan {shlex.join(argv)}: argparse refused it (exit {exc.code})") from None
    if hasattr(args, "preset") and hasattr(args, "set"):
        try:
            resolve(args.preset, args.set)
        except Exception as exc:  # noqa: BLE001 - any refusal of the config is a broken example
            raise CommandRejected(f"medgan {shlex.join(argv)}: {exc}") from None


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    out = set()
    fence = ""
    for line in path.read_text().splitlines():
        match = FENCE.match(line)
        if match and (not fence or match.group(1) == fence):
            fence = "" if fence else match.group(1)
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence or not heading:
            continue
        slug = github_slug(heading.group(1))
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    lines, fence = [], ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and (not fence or match.group(1) == fence):
            fence = "" if fence else match.group(1)
            lines.append("")
            continue
        lines.append("" if fence else re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """Relative links of ``path`` whose target file, or heading anchor in a Markdown file, does not exist."""
    problems = []
    for number, line in enumerate(prose(path.read_text()).splitlines(), 1):
        for match in LINK.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):  # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where}: {file_part} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(root)}")
    return problems


DOCS = doc_files()
COMMANDS = [c for p in DOCS for c in medgan_commands(p.read_text(), str(p.relative_to(REPO)))]


def test_the_documents_are_found():
    names = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"README.md", "k8s/README.md", "bench/RESULTS.md"} <= names
    assert any(n.startswith("docs/") for n in names)


def test_the_readme_shows_commands_of_every_kind():
    readme = [c for c in COMMANDS if c.source.startswith("README.md:")]
    shown = {c.argv[0] for c in readme if c.argv}
    assert {"run", "config", "promote", "rollback", "models", "submit", "schedule"} <= shown, shown


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses(command):
    check_command(command.argv)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_the_readme_keeps_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    quickstart = readme.index("## Quickstart")
    block = readme[quickstart : readme.index("```", readme.index("```", quickstart) + 3)]
    assert "make quickstart" in block and "make test" in block
    assert "make test" in (REPO / ".ci/run").read_text()


# The checks must be able to fail: the same helpers on broken examples.

NEGATIVE_COMMANDS = [
    ["frobnicate"],  # no such subcommand
    ["run", "--data", "data", "--no-such-option"],
    ["sample", "--class", "malignant", "-n", "3", "--out", "x"],  # --model is required
    ["run", "--preset", "ct-512"],  # no such preset
    ["config", "--set", "train.stepz=10"],  # no such key
    ["config", "--set", "train.steps=many"],  # not an integer
]


@pytest.mark.parametrize("argv", NEGATIVE_COMMANDS, ids=" ".join)
def test_a_broken_command_is_rejected(argv):
    with pytest.raises(CommandRejected):
        check_command(argv)


def test_commands_are_found_where_a_reader_would_type_them():
    text = "\n".join(
        [
            "```sh",
            "medgan models   # a comment",
            "$ .venv/bin/medgan config --preset tiny \\",
            "    --set train.steps=3",
            "export MEDGAN_PATIENT_SALT=x && MLFLOW_TRACKING_USERNAME=me medgan runs --repair; echo done",
            "dvc add data  # medgan is not the command here",
            "```",
            "medgan run --outside-a-code-block",
        ]
    )
    found = [c.argv for c in medgan_commands(text, "t.md")]
    assert found == [("models",), ("config", "--preset", "tiny", "--set", "train.steps=3"), ("runs", "--repair")]


def test_a_broken_link_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](there.md) [ok anchor](there.md#a-heading-with-code) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](there.md#nope) `[not a link](nowhere.md)`\n"
    )
    problems = broken_links(doc, root=tmp_path)
    assert len(problems) == 2, problems
    assert "missing.md does not exist" in problems[0] and "#nope" in problems[1]
