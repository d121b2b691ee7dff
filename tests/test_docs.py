"""The README stays short and every relative link in it and in docs/ points at a file of the
repository (no network: http(s) links are not followed)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
README_MAX_LINES = 200


def relative_links(page: Path) -> list[str]:
    """Link targets of a markdown page that point inside the repository (anchors dropped)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t.split("#")[0]]


def unknown_markdown(page: Path, known: set[str]) -> list[str]:
    """Markdown files a page names anywhere in its text (links or not) whose file name is none
    of `known`: a page must not send the reader to a file the repository lacks."""
    names = re.findall(r"[\w./-]*\w\.md\b", page.read_text())
    return sorted({n for n in names if Path(n).name not in known})


def repository_markdown() -> set[str]:
    skip = {".venv", ".git", "runs", "out", "build"}
    return {p.name for p in REPO.rglob("*.md") if not skip & set(p.relative_to(REPO).parts[:-1])}


def broken_links(page: Path) -> list[str]:
    return [t for t in relative_links(page) if not (page.parent / t).resolve().is_file()]


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    assert broken_links(page) == [], f"{page.name}: links to files that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_nothing_points_outside_the_repository(page):
    outside = [t for t in relative_links(page) if REPO not in (page.parent / t).resolve().parents]
    assert outside == []
    assert unknown_markdown(page, repository_markdown()) == []


def test_unknown_markdown_sees_a_page_named_but_not_here(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [here](here.md), docs/design.md and the plan in ../elsewhere/NOWHERE.md")
    assert unknown_markdown(page, {"here.md", "design.md"}) == ["../elsewhere/NOWHERE.md"]


def test_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "here.md").write_text("x")
    page.write_text(
        "[ok](here.md#part) [web](https://example.org/x.md) [gone](docs/gone.md)\n"
        "![img](img/none.png)\n```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == ["docs/gone.md", "img/none.png"]


def test_readme_opens_with_what_it_is_and_cites_the_paper():
    text = (REPO / "README.md").read_text()
    assert "2304.12149" in text and "tissue" in text.split("\n## ")[0]
    for name in ("LICENSE", "CITATION.cff"):
        assert (REPO / name).is_file()
