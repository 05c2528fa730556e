"""One configuration mechanism: strategies declare ``options`` as add-ons do, validated the
same way (a misspelt key is a one-line error naming the plugin), read through one accessor,
shown by ``sb-meta plugins``; and every key a recipe's meta section sets is declared."""

import json
import pathlib
import re

import pytest

from sb_meta.cli import main
from sb_meta.options import check_options
from sb_meta.plugins import PluginRegistry
from sb_meta.recipe import RecipeError, load_hparams
from sb_meta.strategy import META_KEYS
from sb_meta.testing import make_toy_brain, toy_dataset

ROOT = pathlib.Path(__file__).resolve().parents[2]

THIRD_PARTY = '''
from sb_meta.strategy import GradientStrategy


class Damped(GradientStrategy):
    """Inner steps scaled by a declared option."""
    name = "damped"
    options = {"damped_factor": 0.5}

    def inner_update(self, params, grads, step, state):
        f = self.number_option("damped_factor", minimum=0)
        return {n: w if grads[n] is None else w - f * state["lrs"][n] * grads[n]
                for n, w in params.items()}


def sbmeta_strategies():
    return [Damped]
'''


def hp(strategy, **kw):
    return dict(meta_strategy=strategy, inner_steps=1, k_support=2, k_query=2, meta_batch_tasks=2, **kw)


@pytest.fixture
def damped(tmp_path):
    path = tmp_path / "damped.py"
    path.write_text(THIRD_PARTY)
    return str(path)


@pytest.mark.parametrize("config, message", [
    # a key with the strategy's prefix that it does not declare
    (hp("meta_lstm", meta_lstm_hiden=3),
     "unknown key 'meta_lstm_hiden' for strategy 'meta_lstm' (did you mean 'meta_lstm_hidden'?); "
     "its keys are: joint_pooled, meta_lstm_hidden, meta_lstm_preprocess_p"),
    # a near miss of an option of the active strategy (no prefix)
    (hp("protonet", emb_dim=8, metric_distanse="cosine"),
     "unknown key 'metric_distanse' for strategy 'protonet' (did you mean 'metric_distance'?)"),
    (hp("joint", joint_pool=True), "unknown key 'joint_pool' for strategy 'joint' (did you mean 'joint_pooled'?)"),
])
def test_a_misspelt_strategy_option_is_a_one_line_error_naming_the_strategy(config, message):
    with pytest.raises(KeyError) as info:
        make_toy_brain(config)
    text = info.value.args[0]
    assert message in text and "\n" not in text


def test_a_third_party_strategy_declares_reads_and_validates_its_options(damped):
    with pytest.raises(KeyError, match=r"^\"unknown key 'damped_facter' for strategy 'damped' \(did you mean "
                                       r"'damped_factor'\?\); its keys are: joint_pooled, damped_factor\"$"):
        make_toy_brain(hp("damped", plugins=[damped], damped_facter=0.1))
    brain = make_toy_brain(hp("damped", plugins=[damped]))
    assert brain.strategy.option("damped_factor") == 0.5  # the declared default
    brain = make_toy_brain(hp("damped", plugins=[damped], damped_factor=2))
    assert brain.strategy.option("damped_factor") == 2
    episode = next(iter(brain.make_episode_loader(toy_dataset(n_tasks=2, utts_per_task=4))))
    brain.fit_batch(episode)
    brain.hparams.damped_factor = -1
    with pytest.raises(ValueError, match="damped_factor must be >= 0, got -1"):
        brain.fit_batch(episode)
    with pytest.raises(KeyError, match="strategy 'damped' declares no option 'damped_rate'"):
        brain.strategy.option("damped_rate")


def test_an_inherited_option_stays_declared_and_a_subclass_adds_its_own():
    registry = PluginRegistry()
    assert registry.get_strategy("finetune").options == {"joint_pooled": False}
    assert registry.get_strategy("meta_lstm").options == {
        "joint_pooled": False, "meta_lstm_hidden": 4, "meta_lstm_preprocess_p": 10.0}
    # a subclass changes a default without touching its base's
    assert registry.get_strategy("protonet").options["metric_distance"] == "euclidean"
    assert registry.get_strategy("matching").options["metric_distance"] == "cosine"
    # joint_pooled is read through the accessor: the strategy's value, not a hand-read hparam
    assert make_toy_brain(hp("joint", joint_pooled=True)).strategy.option("joint_pooled") is True


def test_sb_meta_plugins_shows_every_strategys_options(capsys, damped):
    assert main(["plugins", "--plugin", damped, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plugins"]}
    assert rows["damped"]["options"] == {"joint_pooled": False, "damped_factor": 0.5}
    assert rows["meta_lstm"]["options"]["meta_lstm_hidden"] == 4
    assert rows["dann"]["options"]["dann_weight"] == 1.0  # add-ons alike
    assert main(["plugins", "--plugin", damped]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["strategy", "damped"])
    assert lines[at + 1].split() == ["options:", "joint_pooled=False,", "damped_factor=0.5"]
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["strategy", "meta_lstm"])
    assert "meta_lstm_hidden=4" in lines[at + 1]


def test_a_strategy_option_is_accepted_on_a_recipe_command_line(tmp_path):
    yaml = tmp_path / "hparams.yaml"
    yaml.write_text("meta_strategy: meta_lstm\nlr: 1.0\n")
    hparams = load_hparams([str(yaml), "--meta_lstm_hidden=3"])[3]
    assert hparams["meta_lstm_hidden"] == 3
    with pytest.raises(RecipeError, match="unknown key 'meta_lstm_hiden' \\(did you mean 'meta_lstm_hidden'"):
        load_hparams([str(yaml), "--meta_lstm_hiden=3"])


def _meta_section_keys(path):
    """The keys of the ``# ---- meta-learning`` section of a recipe's YAML."""
    text = path.read_text()
    start = text.index("# ---- meta-learning")
    end = text.index("\n# ----", start + 1)
    return re.findall(r"^([A-Za-z_]\w*):", text[start:end], flags=re.M)


YAMLS = sorted([ROOT / "sb_meta" / "demo" / "crdnn_ctc.yaml", *ROOT.glob("recipes/*/hparams/*.yaml")])


@pytest.mark.parametrize("path", [p for p in YAMLS if "# ---- meta-learning" in p.read_text()],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_key_a_meta_section_sets_is_declared(path):
    """A meta key of the core (META_KEYS) or an option a registered strategy or add-on
    declares: nothing in the core or the plugins reads a key nobody declares."""
    declared = set(META_KEYS) | {k for cls in PluginRegistry().configurables() for k in cls.options}
    keys = _meta_section_keys(path)
    assert keys and not sorted(set(keys) - declared)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_recipe_key_is_taken_for_a_misspelt_option(path):
    """Strategies' options are checked now: no key of a recipe is refused, whichever
    strategy is active."""
    from ruamel.yaml import YAML

    keys = dict.fromkeys(YAML(typ="rt").load(path.read_text()) or {})
    registry = PluginRegistry()
    for name in registry.strategies:
        check_options(keys, registry.configurables(), [name])


def test_the_demo_sets_every_meta_key_and_the_joint_option():
    keys = set(_meta_section_keys(ROOT / "sb_meta" / "demo" / "crdnn_ctc.yaml"))
    assert set(META_KEYS) <= keys and "joint_pooled" in keys and "plain_batches" in set(META_KEYS)


@pytest.mark.parametrize("value", [None, "yes", 1])
def test_plain_batches_is_a_validated_meta_key(value):
    with pytest.raises(ValueError, match=f"plain_batches must be True or False, got {value!r}"):
        make_toy_brain(hp("joint", plain_batches=value))
