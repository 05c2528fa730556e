"""The README says what the code does: its meta-key table is generated from
META_KEYS and its hook list is the one in hookspecs.py."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_meta_key_table_is_the_one_generated_from_meta_keys():
    from sb_meta.strategy import meta_keys_table

    start = README.index("<!-- meta-keys-table -->")
    assert meta_keys_table() in README[start:start + len(meta_keys_table()) + 200]


def test_the_hook_list_is_hookspecs():
    from sb_meta.hookspecs import hook_names

    start = README.index("<!-- hook-list -->")
    block = README[start:README.index("\n\n", start + 30)]
    listed = re.findall(r"^- `(sbmeta_\w+)`", block, flags=re.M)
    assert listed == hook_names()


def test_the_readme_names_no_removed_module():
    for gone in ("sb_meta.inference", "sb_meta.asr", "CTCASRBrain", "run_recipe"):
        assert gone not in README, gone
