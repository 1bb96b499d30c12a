"""The documentation stays true to the tree: links, the lesson table and the layout block.

* Every relative link and image in every tracked Markdown file resolves: the file or folder
  exists, and a ``#anchor`` matches a heading of the target file by GitHub's slug rule (lower
  case; punctuation other than ``-`` and ``_`` dropped; spaces become ``-``; repeated headings
  get ``-1``, ``-2``, …). Links inside code spans and code blocks are text, not links; http(s)
  and mailto links are not checked (no network in tests).
* The README's lesson table lists exactly the scripts in ``lessons/``, by number and file name,
  and each committed figure it names exists.
* The README's layout block names only paths that exist, and names every folder of ``regnp/``.

Each checker returns a list of problems (one line each) rather than asserting, so the tests
below can also show that it reports a break made on purpose in a copy under ``tmp_path``.
"""
import fnmatch
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target "title") and ![alt](target); the text may hold one level of [..] (badges)
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\]\([^)]*\)|\[[^\[\]]*\])*)\]"
                         r"\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


# ---------------------------------------------------------------- Markdown, read as GitHub does

def outside_fences(text):
    """Yield (line number, line) of ``text`` outside ``` and ~~~ fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
        else:
            yield number, line


def prose_lines(text):
    """Yield (line number, line) of ``text`` outside fenced and indented code blocks, with
    code spans blanked out (their content is code, not Markdown)."""
    previous_blank = True
    in_indented = False
    for number, line in outside_fences(text):
        # an indented code block starts after a blank line (not inside a list item's text)
        indented = line.startswith("    ") or line.startswith("\t")
        in_indented = indented and (in_indented or previous_blank) and line.strip() != ""
        previous_blank = line.strip() == "" and not in_indented
        if in_indented:
            continue
        yield number, CODE_SPAN.sub(lambda s: " " * len(s.group(0)), line)


def github_slug(heading):
    """The anchor GitHub gives a heading: markup removed, lower case, every character that is
    not a letter, digit, space, ``-`` or ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)                              # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path):
    """Every ``#anchor`` that resolves in Markdown file ``path``."""
    found, seen = set(), {}
    for _, line in outside_fences(path.read_text(encoding="utf-8")):
        h = HEADING.match(line)
        if h:
            slug = github_slug(h.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(a.lower() for a in HTML_ANCHOR.findall(line))
    return found


def links(text):
    """(line number, target) of every link and image in Markdown ``text``, code excluded."""
    for number, line in prose_lines(text):
        for m in INLINE_LINK.finditer(line):
            yield number, m.group(2)
            for inner in INLINE_LINK.finditer(m.group(1)):        # an image inside a link
                yield number, inner.group(2)
        d = REFERENCE_DEF.match(line)
        if d:
            yield number, d.group(1)


def broken_links(md_files, root):
    """One line per relative link in ``md_files`` (paths under ``root``) that does not
    resolve: a missing file or folder, or an anchor that no heading of the target makes."""
    problems = []
    for md in md_files:
        text = md.read_text(encoding="utf-8")
        where = md.relative_to(root)
        for number, target in links(text):
            if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):   # http:, mailto:, …
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / unquote(path_part)).resolve() if path_part else md.resolve()
            try:
                dest.relative_to(root.resolve())
            except ValueError:
                problems.append(f"{where}:{number}: {target} points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}:{number}: {target}: no such file or folder")
                continue
            if anchor:
                if dest.is_dir() or dest.suffix.lower() != ".md":
                    problems.append(f"{where}:{number}: {target}: an anchor into a non-Markdown file")
                elif unquote(anchor).lower() not in anchors(dest):
                    problems.append(f"{where}:{number}: {target}: no heading in "
                                    f"{dest.relative_to(root.resolve())} has the anchor #{anchor}")
    return problems


def markdown_files(root):
    """The tracked Markdown files (git ls-files), or every .md outside hidden and build
    folders when ``root`` is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=root, capture_output=True,
                             check=True, text=True).stdout
        files = [root / f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in root.rglob("*.md")
                 if not any(part.startswith(".") or part.endswith(".egg-info") or part == "build"
                            for part in p.relative_to(root).parts)]
    return sorted(f for f in files if f.exists())


def section(text, title):
    """The body of the ``## title`` section of ``text`` (up to the next heading of level ≤ 2)."""
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert m, f"the README has no '## {title}' section"
    return m.group(1)


# ---------------------------------------------------------------- the README's lists

def lesson_table_problems(readme_text, lesson_files, figures_dir):
    """Problems of the README's lesson table against ``lesson_files`` (names of lessons/*.py):
    rows whose number and file name disagree, lessons missing from the table or listed but
    absent, and committed figures (not under ``licensed/``) that match no file."""
    rows = []
    for line in section(readme_text, "Lessons").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"\d\d", cells[0]):
            rows.append(cells)
    problems = []
    listed = set()
    for number, lesson, _, figure in (r[:4] for r in rows):
        m = re.search(r"`(\d\d_[a-z0-9_]+\.py)`", lesson)
        if not m:
            problems.append(f"lesson row {number}: no `NN_name.py` file name in {lesson!r}")
            continue
        name = m.group(1)
        listed.add(name)
        if not name.startswith(number + "_"):
            problems.append(f"lesson row {number} names {name}: the number and the file disagree")
        for pattern in re.findall(r"`([^`]+\.png)`", figure):
            if pattern.startswith("licensed/"):
                continue                              # made locally from licensed data, git-ignored
            if not any(fnmatch.fnmatch(p.name, pattern) for p in figures_dir.glob("*.png")):
                problems.append(f"lesson {name}: figure {pattern} matches nothing in figures/")
    for name in sorted(set(lesson_files) - listed):
        problems.append(f"lessons/{name} is missing from the README's lesson table")
    for name in sorted(listed - set(lesson_files)):
        problems.append(f"the README's lesson table lists {name}, which is not in lessons/")
    return problems


FILE_TOKEN = re.compile(r"^[\w.*-]+(?:\.(?:py|md|png|json|jsonl|csv|npz|ini|cfg|toml|txt)|/)$")


def layout_paths(readme_text):
    """The paths the README's layout block names, resolved from its indentation: a line's first
    word is placed in the tree by its indent (folders end with ``/``); later words that look like
    files or folders are read inside the line's folder (or beside the line's file). A line that
    does not start with a path continues the description above it."""
    block = re.search(r"```[^\n]*\n(.*?)```", section(readme_text, "Layout"), re.S)
    assert block, "the README's Layout section has no code block"
    stack = []                 # (indent, folder path) of the open folders
    paths = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        words = line.split()
        if not FILE_TOKEN.match(words[0]):
            continue                   # the description of the line above, carried over
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        first = words[0]
        path = parent + first
        paths.append(path)
        here = path if first.endswith("/") else parent
        if first.endswith("/"):
            stack.append((indent, path))
        for w in words[1:]:
            w = w.strip(",;:()")
            if FILE_TOKEN.match(w) and not w.startswith("."):
                paths.append(here + w)
    return paths


def tracked_top_folders(root):
    """Top-level folders that hold a tracked file (hidden ones like .ci/ aside); empty when
    ``root`` is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {f.split("/")[0] for f in out.split("\0") if "/" in f and not f.startswith(".")}


def layout_problems(readme_text, root):
    """Paths the layout names that do not exist, and folders it does not name: every folder
    of regnp/ and every tracked top-level folder."""
    problems = []
    named = layout_paths(readme_text)
    for p in named:
        if not (list(root.glob(p.rstrip("/"))) if "*" in p else (root / p).exists()):
            problems.append(f"the README's layout names {p}, which does not exist")
    named_dirs = {p.rstrip("/") for p in named if p.endswith("/")}
    folders = {d.relative_to(root).as_posix() for d in (root / "regnp").rglob("*")
               if d.is_dir() and "__pycache__" not in d.parts}
    for rel in sorted(folders | tracked_top_folders(root)):
        if rel not in named_dirs:
            problems.append(f"the README's layout does not mention {rel}/")
    return problems


def lesson_names(root):
    return sorted(p.name for p in (root / "lessons").glob("[0-9][0-9]_*.py"))


# ---------------------------------------------------------------- the tests

def test_every_relative_link_and_anchor_resolves():
    files = markdown_files(ROOT)
    assert ROOT / "README.md" in files
    problems = broken_links(files, ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_lesson_table_lists_exactly_the_lessons():
    problems = lesson_table_problems((ROOT / "README.md").read_text(encoding="utf-8"),
                                     lesson_names(ROOT), ROOT / "figures")
    assert not problems, "\n".join(problems)


def test_readme_layout_names_existing_paths_and_every_regnp_folder():
    problems = layout_problems((ROOT / "README.md").read_text(encoding="utf-8"), ROOT)
    assert not problems, "\n".join(problems)


def test_github_slugs():
    # GitHub's rule, on headings this project uses (the first two were anchors of the old README)
    assert github_slug("Meta-regularization: what we implement, and where we differ from eq. 12") \
        == "meta-regularization-what-we-implement-and-where-we-differ-from-eq-12"
    assert github_slug("Tables 1–5, claim by claim") == "tables-15-claim-by-claim"
    assert github_slug("Synthetic deformations and σ") == "synthetic-deformations-and-σ"
    assert github_slug("The `ablated_free` *variant*") == "the-ablated_free-variant"
    assert github_slug("Why our numbers may differ from the paper's") \
        == "why-our-numbers-may-differ-from-the-papers"


def test_link_checker_reads_markdown_as_github_does(tmp_path):
    """Links in code are not links; external links are not checked; repeated headings get
    -1, -2; a folder is a valid target; an anchor in a non-Markdown file is a problem."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Title\n\n## Part\n\n## Part\n", encoding="utf-8")
    (tmp_path / "c.py").write_text("x = 1\n", encoding="utf-8")
    a = tmp_path / "a.md"
    a.write_text("# A\n\n[ok](sub/b.md#part-1) [folder](sub/) [self](#a) [web](https://x.invalid/y)\n"
                 "`[not a link](missing.md)` and\n\n```\n[not a link](missing.md)\n```\n\n"
                 "    [indented code](missing.md)\n\n"
                 "[bad anchor](sub/b.md#part-2) [py anchor](c.py#L1) ![img](sub/none.png)\n"
                 "[ref]: sub/gone.md\n", encoding="utf-8")
    problems = broken_links([a], tmp_path)
    assert len(problems) == 4, problems
    assert "a.md:12: sub/b.md#part-2" in problems[0] and "#part-2" in problems[0]
    assert "c.py#L1" in problems[1] and "non-Markdown" in problems[1]
    assert "sub/none.png: no such file" in problems[2]
    assert "a.md:13: sub/gone.md: no such file" in problems[3]


def _copy_docs(tmp_path):
    """A copy of the repository's Markdown, lessons and figures, plus an empty stand-in for
    every other file a link targets, so that the copy's links resolve as the original's do."""
    files = markdown_files(ROOT)
    for f in files:
        dest = tmp_path / f.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    for f in files:
        for _, target in links(f.read_text(encoding="utf-8")):
            path_part = target.partition("#")[0]
            if not path_part or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            src = (f.parent / unquote(path_part)).resolve()
            dest = tmp_path / src.relative_to(ROOT)
            if src.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif src.exists() and not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.touch()
    return [tmp_path / f.relative_to(ROOT) for f in files]


def test_a_broken_link_in_a_copy_is_reported(tmp_path):
    files = _copy_docs(tmp_path)
    # the copy resolves as the original does (other tests say whether that is "all of them")
    before = broken_links(files, tmp_path)
    assert before == broken_links(markdown_files(ROOT), ROOT)
    readme = tmp_path / "README.md"
    text = readme.read_text(encoding="utf-8")
    # 1. a link to a file that is gone
    assert "](docs/method.md)" in text
    (tmp_path / "docs" / "method.md").unlink()
    # 2. a heading renamed under an anchor that another file links to
    training = (tmp_path / "docs" / "training.md").read_text(encoding="utf-8")
    assert "](../README.md#conventions)" in training and "\n## Conventions\n" in text
    readme.write_text(text.replace("\n## Conventions\n", "\n## Conventions in brief\n"),
                      encoding="utf-8")
    problems = [p for p in broken_links([f for f in files if f.exists()], tmp_path)
                if p not in before]
    assert any(p.startswith("README.md:") and "docs/method.md: no such file" in p for p in problems)
    assert any(p.startswith("docs/training.md:") and "#conventions" in p for p in problems)


def test_lesson_table_and_layout_checks_catch_a_stale_readme(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = lesson_names(ROOT)
    assert len(names) >= 2
    # a lesson added to lessons/ but not to the table, and one renamed away from it
    renamed = names[:-1] + ["99_new_lesson.py"]
    problems = lesson_table_problems(readme, renamed, ROOT / "figures")
    assert any("99_new_lesson.py is missing" in p for p in problems)
    assert any(names[-1] in p and "not in lessons/" in p for p in problems)
    # a row whose number disagrees with its file
    first = names[0]
    swapped = readme.replace(f"| {first[:2]} | [`{first}`]", f"| 42 | [`{first}`]", 1)
    assert swapped != readme
    assert any("disagree" in p for p in lesson_table_problems(swapped, names, ROOT / "figures"))
    # a layout that names a folder that is not there, in a tree with a folder it does not name
    (tmp_path / "regnp" / "ops").mkdir(parents=True)
    (tmp_path / "regnp" / "newpkg").mkdir()
    fake = "## Layout\n\n```\nregnp/   the package\n  ops/   ops\n  gone/  moved\n```\n"
    problems = layout_problems(fake, tmp_path)
    assert problems == ["the README's layout names regnp/gone/, which does not exist",
                        "the README's layout does not mention regnp/newpkg/"], problems


@pytest.mark.parametrize("line, expected", [
    ("[x](a.md)", ["a.md"]),
    ('[x](a.md "title")', ["a.md"]),
    ("![fig](figures/a.png) and [y](b.md#c)", ["figures/a.png", "b.md#c"]),
    ("[![badge](b.svg)](c.md)", ["b.svg", "c.md"]),
])
def test_link_extraction(line, expected):
    assert sorted(t for _, t in links(line)) == sorted(expected)
