"""README is the entry page and docs/ holds the reference: README stays
short, links to every page under docs/, and every relative link of README
and the pages (anchors included) points at a file and heading that exist."""

import os
import re

import pytest

from helpers import ROOT

MAX_README_LINES = 400
DOCS = os.path.join(ROOT, "docs")
# [text](target) and ![alt](target); the target has no spaces.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def _pages():
    """README.md and every docs/*.md, as paths relative to ROOT."""
    pages = sorted(
        os.path.join("docs", name)
        for name in os.listdir(DOCS)
        if name.endswith(".md")
    )
    return ["README.md", *pages]


def _prose(relpath):
    """The lines of a Markdown file outside fenced code blocks."""
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        lines = f.read().split("\n")
    prose, fenced = [], False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            prose.append(line)
    return prose


def _links(relpath):
    """The relative link targets of a Markdown file (web links left out)."""
    targets = []
    for line in _prose(relpath):
        for target in LINK.findall(line):
            if not re.match(r"[a-z]+:", target):
                targets.append(target)
    return targets


def _slug(heading):
    """GitHub's anchor of a heading: its text without Markdown, lower case,
    only letters, digits, '_', '-' and spaces kept, spaces made '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(relpath):
    """The anchors of a Markdown file's headings (repeats get -1, -2, ...)."""
    anchors, seen = set(), {}
    for line in _prose(relpath):
        match = re.match(r"#{1,6} (.*)", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _resolve(relpath, target):
    """(file relative to ROOT, anchor or '') that a link of relpath names."""
    path, _, anchor = target.partition("#")
    if not path:
        return relpath, anchor
    joined = os.path.join(os.path.dirname(relpath), path)
    return os.path.relpath(os.path.normpath(joined)), anchor


def test_readme_is_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines, at most {MAX_README_LINES}: move "
        "reference text to its page under docs/"
    )


@pytest.mark.parametrize("relpath", _pages())
def test_every_relative_link_resolves(relpath):
    broken = []
    for target in _links(relpath):
        path, anchor = _resolve(relpath, target)
        if not os.path.exists(os.path.join(ROOT, path)):
            broken.append(f"{target} (no file {path})")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path})")
    assert not broken, f"{relpath}: {broken}"


def test_every_docs_page_is_linked_from_readme():
    linked = {_resolve("README.md", t)[0] for t in _links("README.md")}
    unlinked = [p for p in _pages()[1:] if p not in linked]
    assert not unlinked, f"README.md links none of {unlinked}"


def test_slug_follows_github():
    """Hand cases of GitHub's anchors, as README's links use them."""
    assert _slug("Promises of `run_exp.py`") == "promises-of-run_exppy"
    assert (
        _slug("`run_exp.py` — phase 1, phase 2, results")
        == "run_exppy--phase-1-phase-2-results"
    )
    assert _slug("Choosing `--second_lr`") == "choosing---second_lr"
    assert _slug("The paper's commands") == "the-papers-commands"
