"""The documentation: the site builds strictly, and every link resolves.

mkdocs' strict build checks the links between the site's pages (files and
anchors). Nothing in mkdocs reads README.md, nor the paths that docstrings and
comments in the code point at, so the link checks below cover those: every
relative link in README.md and docs/, and every ``docs/...md`` path or
markdown link in a docstring or comment of the package's code, must name a
file that exists (and a heading that exists, for a link with an anchor).
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
#: Paths that code comments name but that must change in the code, not in docs/
#: (issue 16 moves the module): path -> what to do.  Each must still be found, so an
#: entry goes as soon as the comment is fixed, and this list only shrinks.
PENDING_IN_CODE: dict[str, str] = {}
#: The folders whose docstrings and comments may point at repository files.
CODE_DIRS = ("ptreclaim", "envs", "agents", "scripts", "benchmarks")
README_MAX_LINES = 350

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
#: [text](target) and ![alt](target); the target stops at whitespace or ")".
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
#: A path into docs/ named in code, e.g. ``docs/costs.md``.
_DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md(?![\w])")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str, strip_code: bool = True) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code removed unless
    strip_code is false."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, _INLINE_CODE.sub("", line) if strip_code else line


def _heading_text(raw: str) -> str:
    """A heading's text as rendered: links keep their text, code its content."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    return text.replace("`", "").replace("*", "")


def _github_slug(text: str) -> str:
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _mkdocs_slug(text: str) -> str:
    return slugify(text, "-")


def anchors(path: Path, github: bool) -> set[str]:
    """The anchors of a markdown file's headings, as GitHub or as mkdocs makes them
    (a repeated heading gets -1, -2 on GitHub, _1, _2 in Python-Markdown)."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8"), strip_code=False):
        match = _HEADING.match(line)
        if not match:
            continue
        text = _heading_text(match.group(2))
        slug = _github_slug(text) if github else _mkdocs_slug(text)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}{'-' if github else '_'}{count}")
    return result


def markdown_link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of one markdown file whose file (or anchor) is missing.

    README.md is read as GitHub renders it, docs/ pages as mkdocs does."""
    problems = []
    github = path.parent == root
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for match in _MD_LINK.finditer(line):
            target = match.group(1)
            if _SCHEME.match(target) or target.startswith("//"):
                continue
            where = f"{path.relative_to(root)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif not dest.resolve().is_relative_to(root.resolve()):
                problems.append(f"{where}: outside the repository")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest, github):
                problems.append(f"{where}: no heading with this anchor")
    return problems


def _docstrings_and_comments(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and every bare string statement (docstrings,
    attribute docstrings) of a Python source."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            yield node.lineno, node.value.value


def code_link_problems(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    """Every ``docs/...md`` path and relative markdown link in the docstrings and
    comments of these Python files that names no existing file."""
    problems = []
    for path in files:
        found = sorted(_docstrings_and_comments(path.read_text(encoding="utf-8")))
        for first_line, text in found:
            targets = [(m.start(), m.group(0)) for m in _DOCS_PATH.finditer(text)]
            targets += [(m.start(), m.group(1).partition("#")[0]) for m in _MD_LINK.finditer(text)]
            first: dict[str, int] = {}
            for start, target in sorted(targets):
                first.setdefault(target, start)
            for target, start in first.items():
                if not target or _SCHEME.match(target):
                    continue
                if not ((root / target).exists() or (path.parent / target).exists()):
                    number = first_line + text.count("\n", 0, start)
                    problems.append(f"{path.relative_to(root)}:{number}: {target}: no such file")
    return problems


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a dead link or anchor between pages, or a page
    missing from the nav, fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        # Not --quiet: it hides the warnings from the count that --strict fails on.
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_markdown_link_resolves() -> None:
    problems = [p for path in _markdown_files() for p in markdown_link_problems(path)]
    assert problems == []


def test_every_docs_path_in_the_code_exists() -> None:
    files = _code_files()
    assert len(files) > 20, "the code folders were not found"
    problems = code_link_problems(files)
    pending = {path for path in PENDING_IN_CODE if any(f" {path}: " in p for p in problems)}
    assert [p for p in problems if not any(f" {path}: " in p for path in pending)] == []
    assert pending == set(PENDING_IN_CODE), "fixed in the code: drop it from PENDING_IN_CODE"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES


def test_every_image_in_docs_is_shown() -> None:
    shown = {Path(m.group(1)).name
             for path in _markdown_files()
             for _, line in _prose_lines(path.read_text(encoding="utf-8"))
             for m in _MD_LINK.finditer(line)}
    unused = [p.name for p in sorted((ROOT / "docs").glob("*.png")) if p.name not in shown]
    assert unused == []


# The checkers themselves must catch what they are for.

def test_markdown_checker_finds_dead_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Two words\n\n"
        "[ok](#two-words) [ok](other.md) [dead](gone.md) [bad anchor](#three-words)\n"
        "`[in code](gone.md)` [web](https://example.org/x.md)\n\n"
        "```\n[in a fence](gone.md)\n```\n", encoding="utf-8")
    (tmp_path / "docs" / "other.md").write_text("# Other\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("[ok](docs/page.md#two-words) [dead](docs/page.md#nothing)\n"
                      "[dead](docs/missing.md)\n", encoding="utf-8")
    assert markdown_link_problems(tmp_path / "docs" / "page.md", tmp_path) == [
        "docs/page.md:5: gone.md: no such file",
        "docs/page.md:5: #three-words: no heading with this anchor",
    ]
    assert markdown_link_problems(readme, tmp_path) == [
        "README.md:1: docs/page.md#nothing: no heading with this anchor",
        "README.md:2: docs/missing.md: no such file",
    ]


def test_code_checker_finds_dead_docs_paths(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# There\n", encoding="utf-8")
    module = tmp_path / "mod.py"
    module.write_text(
        '"""See docs/there.md and docs/gone.md; QEMU docs/devel/x.rst is not ours."""\n'
        "# comment: [the page](docs/also_gone.md)\n"
        'TEXT = "docs/not_a_comment.md"\n'
        "X = 1\n"
        '"""Attribute docstring: ``docs/gone_too.md``."""\n', encoding="utf-8")
    assert code_link_problems([module], tmp_path) == [
        "mod.py:1: docs/gone.md: no such file",
        "mod.py:2: docs/also_gone.md: no such file",
        "mod.py:5: docs/gone_too.md: no such file",
    ]


@pytest.mark.parametrize(("heading", "github", "mkdocs"), [
    ("Tuning (`scripts/tune.py`)", "tuning-scriptstunepy", "tuning-scriptstunepy"),
    ("From host signals to the env's observation",
     "from-host-signals-to-the-envs-observation", "from-host-signals-to-the-envs-observation"),
    ("Measured: `soft_hard` on the training suite",
     "measured-soft_hard-on-the-training-suite", "measured-soft_hard-on-the-training-suite"),
])
def test_slugs(heading: str, github: str, mkdocs: str) -> None:
    assert _github_slug(_heading_text(heading)) == github
    assert _mkdocs_slug(_heading_text(heading)) == mkdocs


def test_readme_example_prints_what_the_readme_says(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example runs and prints the line the README quotes."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Example", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    quoted = re.search(r"It prints `([^`]+)`", section)
    assert quoted is not None
    exec(compile(code, "README.md example", "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip() == quoted.group(1)
