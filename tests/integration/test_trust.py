"""A model folder is code: what sb-meta loads without ``trust=True`` (issue 29).

The command-line cases (one line naming the tag, its line and ``--trust-model``;
nothing ran, nothing written) are rows of tests/test_faults.py.
"""

import json
import pathlib
import shutil

import pytest


from helpers import published  # noqa: E402
from helpers import tiny_asr as h  # noqa: E402
from sb_meta.adapt import Method
pytestmark = pytest.mark.usefixtures("one_thread")

#: (YAML, line, what the refusal names): each runs code, reads files or escapes the allow-list
REFUSED = {
    "a shell command": ("a: 1\nrun: !apply:os.system [ls]\n", 2, "!apply:os.system"),
    "a module outside": ("a: !new:collections.Counter\n", 1, "!new:collections.Counter"),
    "a module reached through an allowed one": ("f: !name:speechbrain.nnet.linear.torch.hub.load\n", 1,
                                                "(it is torch.hub.load)"),
    "os through speechbrain's own import": ("f: !name:speechbrain.dataio.encoder.os.system\n", 1, "!name:"),
    "torch.hub": ("m: !apply:torch.hub.load [x, y]\n", 1, "!apply:torch.hub.load"),
    "torch.load": ("m: !apply:torch.load [x.pt]\n", 1, "!apply:torch.load"),
    "a shell helper of speechbrain": ("m: !apply:speechbrain.utils.superpowers.run_shell [ls]\n", 1,
                                      "run_shell"),
    "a method that writes": ("t: !new:speechbrain.dataio.encoder.CTCTextEncoder\n"
                             "w: !apply:speechbrain.dataio.encoder.CTCTextEncoder.save [!ref <t>, /tmp/x]\n",
                             2, "save writes"),
    "a module object": ("m: !module:speechbrain.core\n", 1, "!module:"),
    "a module as a name": ("m: !name:speechbrain.nnet\n", 1, "it is a module"),
    "an include": ("m: !include:other.yaml\n", 1, "!include:"),
    "a Python-object tag": ("m: !!python/name:os.system\n", 1, "!!python/name:os.system"),
    "a tuple hiding a Python tag": ("m: (1, !!python/object/apply:os.system [ls])\n", 1, "the tuple"),
    "a tuple as a key": ("(1, !!python/object/apply:os.system [ls]): 3\n", 1, "the tuple"),
    "a private attribute": ("a: !name:speechbrain.nnet.linear.Linear\nb: !ref <a.__init__>\n", 2,
                            "<a.__init__>"),
    "unbounded arithmetic": ("a: !ref 9**9**9\n", 1, "raises to a power"),
    "setattr of another attribute": ("a: !apply:setattr\n    - !name:torch.nn.Linear\n    - forward\n"
                                     "    - !name:builtins.tuple\n", 1, "sets an attribute"),
    "an unknown tag": ("a: !foo bar\n", 1, "!foo"),
}

#: forms SpeechBrain's published folders and sb-meta's exports use
ALLOWED = {
    "classes, functions, references": "n: 20\nlin: !new:torch.nn.Linear [!ref <n>, 3]\n"
                                      "act: !name:torch.nn.LeakyReLU\nw: !ref <lin.weight>\n",
    "tuples of data": "cnn_channels: (128, 256)\nkernel: (3, 3)\n",
    "sentencepiece": "tokenizer: !new:sentencepiece.SentencePieceProcessor\n",
    "a Hugging Face model through speechbrain": (
        "wav2vec2: !new:speechbrain.lobes.models.huggingface_transformers.wav2vec2.Wav2Vec2\n"
        "    source: facebook/wav2vec2-base\n    save_path: wav2vec2_checkpoint\n"),
    "the pretrainer": "m: !new:torch.nn.Linear [2, 2]\npretrainer: "
                      "!new:speechbrain.utils.parameter_transfer.Pretrainer\n    loadables:\n        m: !ref <m>\n",
    "sb-meta's int8 export of RNNs": (
        "g: !apply:torch.serialization.add_safe_globals\n    - - !name:torch.ScriptObject\n"
        "f: !apply:setattr\n    - !name:torch.ao.nn.quantized.dynamic.LSTM\n    - flatten_parameters\n"
        "    - !name:builtins.tuple\n"),
    "a word head of sb-meta": "head: !new:sb_meta.words.heads.PrototypeHead\n",
    "placeholders": "data_folder: !PLACEHOLDER\n",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_yaml_that_names_code_outside_the_allow_list_is_refused_in_one_line(case):
    from sb_meta.trust import UntrustedModelError, check_yaml

    text, line, named = REFUSED[case]
    with pytest.raises(UntrustedModelError) as err:
        check_yaml(text, "m/hyperparams.yaml")
    message = str(err.value)
    assert message.startswith(f"m/hyperparams.yaml line {line}: ") and named in message, message
    assert "--trust-model (Python: trust=True)" in message and "\n" not in message


def test_a_tuple_made_by_interpolation_is_refused(tmp_path):
    """``!ref (1, <a>)`` with ``a`` a Python tag: hyperpyyaml's reference resolution writes the
    tuple unquoted in a process that has not loaded a YAML yet, and then parses it with an unsafe
    loader; so the check runs in a fresh process (later, the same text is quoted and harmless)."""
    import subprocess
    import sys

    text = "a: '!!python/object/apply:os.system [touch %s]'\nb: !ref (1, <a>)\n" % (tmp_path / "pwned")
    code = ("import sys; from sb_meta.trust import check_yaml, UntrustedModelError\n"
            "try:\n    check_yaml(sys.argv[1], 'm.yaml')\nexcept UntrustedModelError as e:\n"
            "    print(e); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.startswith("m.yaml line 2: the tuple '(1, !!python/object/apply:os.system")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_what_model_folders_use_is_allowed(case):
    from sb_meta.trust import check_yaml

    check_yaml(ALLOWED[case], "ok.yaml")


def test_a_published_speechbrain_folder_passes_the_check_as_it_is():
    """The CRDNN + RNNLM layout of SpeechBrain's hub folders (its load, adaptation and
    export without trust=True: tests/integration/test_export_attention.py)."""
    from sb_meta.trust import check_yaml

    check_yaml(published.PUBLISHED_YAML, "published/hyperparams.yaml")


model = h.exported_fixture("trust", epochs=1)


def evil_copy(model, folder, payload):
    shutil.copytree(model["export"], folder)
    with open(folder / "hyperparams.yaml", "a") as f:
        f.write(f'__evil: !apply:os.system ["touch {payload}"]\n')
    return folder


def test_a_folder_naming_other_code_loads_only_with_trust_and_its_export_leaves_the_code_out(model, tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.trust import UntrustedModelError, check_yaml

    folder = evil_copy(model, tmp_path / "evil", tmp_path / "pwned")
    with pytest.raises(UntrustedModelError, match=r"hyperparams\.yaml line \d+: !apply:os\.system"):
        load_model(folder)
    assert not (tmp_path / "pwned").exists()

    trusted = load_model(folder, trust=True)  # the user's explicit choice: the YAML runs
    assert (tmp_path / "pwned").exists()
    rows = [r for r in model["rows"] if r["spk_id"] == "s0"][:2]
    adapted = trusted.adapt(([r["wav"] for r in rows], [r["wrd"] for r in rows]), Method(steps=1, lr=0.01))
    out = adapted.export(tmp_path / "adapted")
    text = (out / "hyperparams.yaml").read_text()
    assert "os.system" not in text and "__evil" not in text  # an export carries no tag it did not need
    check_yaml(text, "adapted")
    load_model(out)  # loads without trust


def test_python_files_and_plugin_files_in_a_folder_need_trust(model, tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.trust import UntrustedModelError

    code = tmp_path / "code"
    shutil.copytree(model["export"], code)
    (code / "custom.py").write_text("import os\n")
    with pytest.raises(UntrustedModelError, match=r"holds Python code \(custom\.py\)"):
        load_model(code)

    plugin = tmp_path / "plugin"
    shutil.copytree(model["export"], plugin)
    info = json.loads((plugin / "sbmeta.json").read_text())
    info["meta_config"]["plugins"] = [str(tmp_path / "mine.py")]
    (plugin / "sbmeta.json").write_text(json.dumps(info))
    with pytest.raises(UntrustedModelError, match=r"names the plugin '.*mine\.py', which is not an installed"):
        load_model(plugin)
    assert load_model(plugin, trust=True).meta_config["plugins"] == [str(tmp_path / "mine.py")]


def test_the_command_line_loads_a_trusted_folder_with_trust_model(model, tmp_path, capsys):
    from sb_meta.cli import main

    folder = evil_copy(model, tmp_path / "evil", tmp_path / "pwned")
    wav = model["rows"][0]["wav"]
    assert main(["transcribe", "--model", str(folder), wav]) == 2
    assert "--trust-model" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    assert main(["transcribe", "--trust-model", "--model", str(folder), wav]) == 0
    assert (tmp_path / "pwned").exists()
