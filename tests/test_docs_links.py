"""Every relative link and figure in the project's Markdown points at a file that exists.

The quality benchmark rewrites a section of ``benchmarks/README.md`` and moves figures under
``benchmarks/quality/figures/``; a figure moved by hand, or a run's section pasted elsewhere,
must not leave a link to nothing.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md",
                    *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target); a target ends at a space (a title) or the bracket
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_targets(text: str) -> list[str]:
    """The link targets of ``text`` that name a file of this repository (no scheme, no
    bare anchor), without their anchors."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_relative_targets_skips_urls_and_anchors():
    text = ("[a](https://x.org/y) [b](#section) ![c](fig/c.png) [d](docs/d.md#part) "
            '[e](e.md "title") [f](mailto:x@y.z)')
    assert relative_targets(text) == ["fig/c.png", "docs/d.md", "e.md"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_exists(document):
    missing = [target for target in relative_targets(document.read_text())
               if not (document.parent / target).exists()]
    assert not missing, f"{document.relative_to(ROOT)} links to files that do not exist: {missing}"
