"""The commands and code blocks of the README, as the README tests run them."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def text():
    return (ROOT / "README.md").read_text()


def commands():
    """Every ``$ command`` of the README's ``console`` blocks, continuation lines joined,
    in the README's order."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", text(), re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        out += [line[2:].strip() for line in joined.splitlines() if line.startswith("$ ")]
    return out


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", text(), re.S)
