"""The README and the documentation say what the code does: the meta-key table is the one
generated from META_KEYS, the hook list is hookspecs.py's; the README stays a front door
(at most 250 lines, a results table of at most 8 rows each linking to its study, links
that resolve, no dated narrative)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def test_the_meta_key_table_is_the_one_generated_from_meta_keys():
    from sb_meta.strategy import meta_keys_table

    page = (DOCS / "meta-training.md").read_text()
    start = page.index("<!-- meta-keys-table -->")
    assert meta_keys_table() in page[start:start + len(meta_keys_table()) + 200]


def test_the_hook_list_is_hookspecs():
    from sb_meta.hookspecs import hook_names

    page = (DOCS / "plugins.md").read_text()
    start = page.index("<!-- hook-list -->")
    block = page[start:page.index("\n\n", start + 30)]
    listed = re.findall(r"^- `(sbmeta_\w+)`", block, flags=re.M)
    assert listed == hook_names()


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 250
    for heading in ("## Install", "## The demo", "## Meta-training a SpeechBrain recipe",
                    "## Adapting a pretrained model", "## A plugin in 20 lines", "## Results",
                    "## Documentation", "## Licence and citation"):
        assert heading in README, heading
    results = README[README.index("## Results"):README.index("## Documentation")]
    rows = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| what")
            and not line.startswith("| ---")]
    assert 1 <= len(rows) <= 8
    for row in rows:
        assert re.search(r"\]\(docs/studies/\w+/README\.md\)", row), row


@pytest.mark.parametrize("page", ["README.md"] + [str(p.relative_to(ROOT)) for p in sorted(DOCS.rglob("*.md"))
                                                 if "_build" not in p.parts])
def test_relative_links_resolve(page):
    path = ROOT / page
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{page}: {target}"


def test_no_dated_narrative_and_no_removed_module_in_the_readme():
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|[Mm]easured on|previous round|not rerun today", README)
    for gone in ("sb_meta.inference", "sb_meta.asr", "CTCASRBrain", "run_recipe", "benchmarks/an4_"):
        assert gone not in README, gone


def test_library_text_has_no_history_or_measurement():
    """Code and docstrings say what and why; dates, rounds, issues and measured figures
    belong to the studies, the benchmarks and the commit messages."""
    pattern = re.compile(r"\bmeasured\b|\b20\d\d-\d\d-\d\d\b|\bissues? ?#?\d+|\b(previous|earlier|this|last) "
                         r"(round|session)\b|\brounds? of (work|review)", re.I)
    found = []
    for folder in ("sb_meta", "plugins", "recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
