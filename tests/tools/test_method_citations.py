"""Citations of the method page: every "docs/METHOD.md section N" in the code and docs names a
section that docs/METHOD.md has, and every Markdown link to it resolves."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHOD = REPO / "docs" / "METHOD.md"
SKIP_DIRS = {".git", ".venv", "output", "runs", "__pycache__", "build", "dist"}
CITATION = re.compile(r"METHOD\.md\)? section (\d+(?:\.\d+)?)")
LINK = re.compile(r"\]\(([^)]*METHOD\.md)\)")


def text_files():
    for path in REPO.rglob("*"):
        if path.suffix in (".py", ".md", ".sh") and path.is_file() and not (
                SKIP_DIRS & set(path.relative_to(REPO).parts)):
            yield path


def method_sections():
    """Section numbers of docs/METHOD.md: "2" for "## 2. Inference", "2.6" for "### 2.6 ..."."""
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", METHOD.read_text(encoding="utf-8"),
                          re.MULTILINE))


def test_method_page_has_the_cited_sections():
    sections = method_sections()
    assert {"1", "2", "2.1", "2.6", "2.8", "3", "4", "4.3", "5", "6"} <= sections
    cited = {}
    for path in text_files():
        if path == METHOD:
            continue
        for number in CITATION.findall(path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(number, []).append(str(path.relative_to(REPO)))
    assert len(cited) >= 10  # the code cites the page throughout
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, "cited sections that docs/METHOD.md lacks: %s" % missing


def test_links_to_the_method_page_resolve():
    links = 0
    for path in text_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text(encoding="utf-8", errors="replace")):
            links += 1
            assert (path.parent / target).resolve() == METHOD, "%s: %s" % (path, target)
    assert links >= 3
