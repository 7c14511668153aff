"""The documentation holds together: relative Markdown links reach existing files (and
headings, for anchors), every Markdown file under ``docs/`` that the code, configs and docs cite
exists, every cited section of the design notes (``docs/design/hila.md §7``, ``§2.2-2.3``,
``§6, §8``, ``§11 P10``) is a numbered heading there (P-items: a labelled entry of that
section), README.md stays within 8 KiB, and no file names a path outside the repository."""
import re
import subprocess
from pathlib import Path
from typing import Dict, List, NamedTuple, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
README_LIMIT_BYTES = 8192
CITING_SUFFIXES = (".py", ".yaml", ".md")
# Spelled in parts so that this file does not contain them.
OUTSIDE_PATHS = ("../" + "shared", "/" + "work" + "/")

FENCED_CODE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
DOC_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*?\.md\b")
DESIGN_NOTE = re.compile(r"(?<![\w/.-])docs/design/(\w+)\.md")
SECTION = r"(\d+(?:\.\d+)*)"
# One cited section: §N[.M...], optionally a range (-§K, -K.L), "'s", and a P-item after it.
SECTION_REF = re.compile(
    rf"§{SECTION}(?:\s*[-–]\s*§?{SECTION})?(?:'s)?(?:[\s#]+(P\d+)\b)?"
)
# What may join two cited sections: a comma, "and", "or", "with", after an optional
# parenthetical remark ("§7 (pairs, exact) and §9.2").
JOINER = re.compile(r"(?:\s*\([^()§]*\))?[\s#]*(?:,|\band\b|\bor\b|\bwith\b)[\s#]*(?=§)")
HEADING = re.compile(rf"^(#+)\s+§{SECTION}\b", re.M)
ITEM_LABEL = re.compile(r"^\s*[-*]\s+\*\*(P\d+)\*\*", re.M)


class Citation(NamedTuple):
    note: str  # "hila", "hmsa", "hatnet"
    section: str  # "7", "2.2"
    item: str  # "P10" or ""


def project_files() -> List[Path]:
    """Files git tracks or would track (untracked files that .gitignore does not exclude)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    return sorted({REPO / name for name in listed if name and (REPO / name).is_file()})


def markdown_files() -> List[Path]:
    return [REPO / "README.md", REPO / "datasets" / "README.md", *sorted(REPO.glob("docs/**/*.md"))]


def citing_files() -> List[Path]:
    return [path for path in project_files() if path.suffix in CITING_SUFFIXES]


def markdown_links(text: str) -> List[str]:
    """Targets of ``[x](target)`` outside code blocks and code spans."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", text))
    return LINK.findall(prose)


def heading_anchors(text: str) -> Set[str]:
    """The anchors GitHub gives the headings of ``text``: lower case, punctuation dropped, spaces
    as hyphens, "-1", "-2", ... appended to repeats."""
    anchors: Set[str] = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", FENCED_CODE.sub("", text), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        repeat = 0
        while (anchor if repeat == 0 else f"{anchor}-{repeat}") in anchors:
            repeat += 1
        anchors.add(anchor if repeat == 0 else f"{anchor}-{repeat}")
    return anchors


def broken_links(markdown: Path) -> List[str]:
    """The relative link targets of ``markdown`` that name no file or folder, or an anchor that
    is no heading of the Markdown file they name (URLs and mailto: are not checked)."""
    broken = []
    for target in markdown_links(markdown.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        if re.match(r"[a-z][a-z0-9+.-]*:", path):
            continue
        linked = markdown.parent / path if path else markdown
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            if anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
                broken.append(target)
    return broken


def _expand_range(start: str, end: str) -> List[str]:
    """Both ends of "§10.1-2" as "10.1" and "10.2" (a short end shares the start's prefix)."""
    if not end:
        return [start]
    head, tail = start.split("."), end.split(".")
    return [start, ".".join(head[: len(head) - len(tail)] + tail)]


def cited_sections(text: str) -> List[Citation]:
    """Every section of docs/design/<note>.md that ``text`` cites."""
    citations = []
    for mention in DESIGN_NOTE.finditer(text):
        position = mention.end()
        while True:
            spaces = re.match(r"[\s#]*", text[position:]).end()
            ref = SECTION_REF.match(text, position + spaces)
            if not ref:
                break
            start, end, item = ref.groups()
            sections = _expand_range(start, end or "")
            citations += [Citation(mention.group(1), s, "") for s in sections]
            if item:
                citations.append(Citation(mention.group(1), sections[-1], item))
            joiner = JOINER.match(text, ref.end())
            if not joiner:
                break
            position = joiner.end()
    return citations


def note_sections(text: str) -> Dict[str, Tuple[str, ...]]:
    """Numbered headings of a note -> the P-items labelled in that section's body."""
    headings = list(HEADING.finditer(text))
    sections = {}
    for index, heading in enumerate(headings):
        level = len(heading.group(1))
        end = len(text)
        for later in headings[index + 1 :]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        sections[heading.group(2)] = tuple(ITEM_LABEL.findall(text[heading.end() : end]))
    return sections


def missing_citations(citations: List[Citation], notes: Dict[str, str]) -> List[Citation]:
    """The citations whose note, section or P-item does not exist in ``notes`` (name -> text)."""
    parsed = {name: note_sections(text) for name, text in notes.items()}
    missing = []
    for citation in citations:
        sections = parsed.get(citation.note)
        if sections is None or citation.section not in sections:
            missing.append(citation)
        elif citation.item and citation.item not in sections[citation.section]:
            missing.append(citation)
    return missing


def outside_path_mentions(text: str) -> List[str]:
    return [pattern for pattern in OUTSIDE_PATHS if pattern in text]


# ---------------------------------------------------------------- the parsers on small inputs


def test_link_parser_reports_broken_links_and_anchors_and_skips_code_and_urls(tmp_path):
    (tmp_path / "guide").mkdir()
    guide = "# Good\n## Install it (CPU)\n## Install it (CPU)\n"
    (tmp_path / "guide" / "GOOD.md").write_text(guide)
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n[good](guide/GOOD.md#install-it-cpu-1) [missing](guide/MISSING.md)\n"
        "[web](https://example.org/x.md) [bad anchor](guide/GOOD.md#setup)\n"
        "[here](#top) [nowhere](#bottom) `[code](guide/IN_CODE.md)`\n"
        "```\n[fenced](guide/FENCED.md)\n```\n"
    )
    assert markdown_links(page.read_text()) == [
        "guide/GOOD.md#install-it-cpu-1", "guide/MISSING.md", "https://example.org/x.md",
        "guide/GOOD.md#setup", "#top", "#bottom",
    ]  # fmt: skip
    assert broken_links(page) == ["guide/MISSING.md", "guide/GOOD.md#setup", "#bottom"]


def test_citation_parser_reads_ranges_lists_and_items():
    text = (
        "(docs/design/hila.md §7 and §9.2 and docs/design/hatnet.md §4's params)\n"
        "docs/design/hmsa.md §3-§4, docs/design/hmsa.md §10.1-2 with scales\n"
        "docs/design/hatnet.md §2.2-2.3), docs/design/hatnet.md §6, §8),\n"
        "docs/design/hila.md §11\nP10). docs/design/hila.md §9.2 and §11 P14,\n"
        "# docs/design/hila.md §7 (pairs) and §9.2\n"
        "docs/design/hatnet.md §2.2 with §2.6's padding; docs/design/hmsa.md) §5 is no citation"
    )
    assert cited_sections(text) == [
        Citation("hila", "7", ""), Citation("hila", "9.2", ""), Citation("hatnet", "4", ""),
        Citation("hmsa", "3", ""), Citation("hmsa", "4", ""),
        Citation("hmsa", "10.1", ""), Citation("hmsa", "10.2", ""),
        Citation("hatnet", "2.2", ""), Citation("hatnet", "2.3", ""),
        Citation("hatnet", "6", ""), Citation("hatnet", "8", ""),
        Citation("hila", "11", ""), Citation("hila", "11", "P10"),
        Citation("hila", "9.2", ""), Citation("hila", "11", ""), Citation("hila", "11", "P14"),
        Citation("hila", "7", ""), Citation("hila", "9.2", ""),
        Citation("hatnet", "2.2", ""), Citation("hatnet", "2.6", ""),
    ]  # fmt: skip


def test_doc_path_pattern_finds_repository_paths_only():
    text = "see docs/INSTALL.md, docs/design/hila.md §7 and github.com/x/docs/OTHER.md"
    assert DOC_PATH.findall(text) == ["docs/INSTALL.md", "docs/design/hila.md"]


def test_missing_sections_and_items_are_reported():
    note = "# Note\n## §1 One\n- **P1** first\n### §1.1 Sub\n## §2 Two\n- **P2** second\n"
    citations = [
        Citation("x", "1", ""), Citation("x", "1.1", ""), Citation("x", "1", "P1"),
        Citation("x", "3", ""), Citation("x", "1", "P2"), Citation("y", "1", ""),
    ]  # fmt: skip
    assert note_sections(note) == {"1": ("P1",), "1.1": (), "2": ("P2",)}
    assert missing_citations(citations, {"x": note}) == citations[3:]


def test_outside_path_check_finds_both_patterns():
    assert outside_path_mentions("see " + OUTSIDE_PATHS[0] + "/design/hila.md") == [
        OUTSIDE_PATHS[0]
    ]
    assert outside_path_mentions("at " + OUTSIDE_PATHS[1] + "main") == [OUTSIDE_PATHS[1]]
    assert outside_path_mentions("docs/design/hila.md, ../datasets/README.md") == []


# ---------------------------------------------------------------- the repository


@pytest.mark.parametrize("markdown", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_name_existing_files(markdown):
    assert broken_links(markdown) == []


def test_every_cited_doc_exists():
    missing = {
        f"{path.relative_to(REPO)}: {cited}"
        for path in citing_files()
        for cited in DOC_PATH.findall(path.read_text(encoding="utf-8"))
        if not (REPO / cited).is_file()
    }
    assert sorted(missing) == []


def test_every_cited_design_section_exists():
    notes = {
        path.stem: path.read_text(encoding="utf-8") for path in REPO.glob("docs/design/*.md")
    }
    assert {"hila", "hmsa", "hatnet"} <= set(notes)
    missing = {
        f"{path.relative_to(REPO)}: docs/design/{c.note}.md §{c.section} {c.item}".rstrip()
        for path in citing_files()
        for c in missing_citations(cited_sections(path.read_text(encoding="utf-8")), notes)
    }
    assert sorted(missing) == []


def test_readme_fits_in_8_kib():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move details to docs/"


def test_no_file_names_a_path_outside_the_repository():
    mentions = {
        f"{path.relative_to(REPO)}: {pattern}"
        for path in project_files()
        for pattern in outside_path_mentions(path.read_bytes().decode("utf-8", "replace"))
    }
    assert sorted(mentions) == []
