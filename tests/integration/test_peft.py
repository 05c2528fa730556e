"""Parameter-efficient adaptation add-ons (``sb_meta_plugins.peft``) and adapter
export / loading (``sb_meta.adapt``)."""

import json
import pathlib

import numpy as np
import pytest
import torch


from sb_meta.testing import make_toy_brain, toy_dataset

from helpers import tiny_asr as helpers
from sb_meta.adapt import Method

ADDONS = ["lora", "houlsby", "lhuc"]
AN4_YAML = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "AN4" / "hparams" / "crdnn_ctc_meta.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def toy(addons=(), **hp):
    base = dict(meta_strategy="fomaml", k_support=3, k_query=3, meta_batch_tasks=2, inner_steps=2,
                inner_lr=0.1, meta_addons=list(addons))
    if addons:
        base["peft_targets"] = ["lin*"]
    base.update(hp)
    return make_toy_brain(base)


def toy_batch():
    data = toy_dataset(n_tasks=2, utts_per_task=6)
    brain = toy()
    return next(iter(brain.make_episode_loader(data))).tasks[0].support


def strip_wrappers(name):
    return name.replace(".pretrained_module", "").replace(".pretrained_linear", "")


# ---------------------------------------------------------------- surgery


@pytest.mark.parametrize("addon", ADDONS)
def test_surgery_preserves_outputs_toy(addon):
    import speechbrain as sb

    batch = toy_batch()
    plain, wrapped = toy(), toy([addon], peft_rank=4)
    with torch.no_grad():
        want = plain.compute_forward(batch, sb.Stage.TEST)
        got = wrapped.compute_forward(batch, sb.Stage.TEST)
    assert torch.equal(got, want)
    # the base weights are the same tensors, renamed under the wrapper
    base = {strip_wrappers(n): p for n, p in wrapped.modules.named_parameters()}
    for n, p in plain.modules.named_parameters():
        assert torch.equal(base[n], p), n
    # new parameters: on the brain's device and dtype, registered in modules
    adapters = wrapped.addons[0].adapter_state_dict(wrapped)
    assert adapters and all(t.dtype == torch.float64 for t in adapters.values())
    assert set(adapters) <= {n for n, _ in wrapped.modules.named_parameters()}
    assert set(adapters) == set(wrapped.strategy.adapt_names())


@pytest.mark.parametrize("addon", ADDONS)
def test_surgery_preserves_outputs_crdnn(addon, tmp_path):
    """Default targets on a CRDNN: the DNN linear layer and the CTC head."""
    import speechbrain as sb
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.dataio.batch import PaddedBatch

    ASR = helpers.RECIPE.ASR
    torch.manual_seed(0)
    hp = load_hyperpyyaml(helpers.CTC_YAML)
    run = {"device": "cpu", "noprogressbar": True}
    brain = ASR(modules=hp["modules"], hparams=dict(hp), run_opts=run)
    g = torch.Generator().manual_seed(0)
    tok = torch.LongTensor([1, 2])
    batch = PaddedBatch([{"id": str(i), "sig": 0.1 * torch.randn(n, generator=g), "tokens": tok,
                          "tokens_bos": tok, "tokens_eos": tok} for i, n in enumerate((8000, 6000))])
    brain.modules.train()
    with torch.no_grad():  # training mode: InputNormalization statistics get initialised
        brain.compute_forward(batch, sb.Stage.TRAIN)
    brain.modules.eval()
    with torch.no_grad():
        want = brain.compute_forward(batch, sb.Stage.TEST).log_probs
    # a brain with the add-on, on the same module objects (surgery in place)
    peft = ASR(modules=hp["modules"], hparams=dict(hp, meta_addons=[addon]), run_opts=run)
    assert peft.addons[0].wrapped == ["enc.DNN.block_0.linear.w", "ctc_lin.w"]
    peft.modules.eval()
    with torch.no_grad():
        got = peft.compute_forward(batch, sb.Stage.TEST).log_probs
    assert torch.equal(got, want)
    names = peft.strategy.adapt_names()
    assert names and all(".adapter_" in n or n.endswith("lhuc_r") for n in names)


def test_targets_are_linear_layers_only():
    from sb_meta_plugins.peft import select_linear_layers

    mods = torch.nn.ModuleDict({"rnn": torch.nn.LSTM(2, 3), "lin": torch.nn.Linear(3, 1)})
    with pytest.raises(ValueError, match="wrap torch.nn.Linear layers only"):
        select_linear_layers(mods, ["rnn"])
    with pytest.raises(ValueError, match="matches no module; linear layers are: lin"):
        select_linear_layers(mods, ["nope*"])
    with pytest.raises(ValueError, match="select no linear layer"):
        select_linear_layers(mods)  # the CRDNN defaults match nothing here
    with pytest.raises(ValueError, match="'nothing\\*' matches no module"):
        toy(["lora"], peft_targets=["lin*", "nothing*"])
    # peft_* keys are not mistaken for misspelt meta keys
    assert toy(["lhuc"], peft_rank=2, peft_alpha=4.0).addons[0].settings["peft_alpha"] == 4.0


# ---------------------------------------------------------------- adaptation / meta-training


@pytest.mark.parametrize("addon", ADDONS)
def test_only_adapter_params_adapt(addon):
    brain = toy([addon])
    batch = toy_batch()
    before = {n: p.detach().clone() for n, p in brain.modules.named_parameters()}
    fast = brain.strategy.adapt(batch, steps=2, lr=0.5)
    adapters = set(brain.addons[0].adapter_state_dict(brain))
    assert set(fast) == adapters
    assert any(not torch.equal(fast[n], before[n]) for n in fast)
    for n, p in brain.modules.named_parameters():  # adapt() returns fast weights only
        assert torch.equal(p, before[n])


def test_fomaml_meta_training_with_lora_changes_adapters(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    brain = toy(["lora"], peft_rank=2)
    adapters = list(brain.addons[0].adapter_state_dict(brain))
    before = {n: p.detach().clone() for n, p in brain.modules.named_parameters()}
    data = toy_dataset(n_tasks=4, utts_per_task=8)
    brain.fit(range(1, 3), brain.make_episode_loader(data), progressbar=False)
    now = dict(brain.modules.named_parameters())
    assert all(not torch.equal(now[n], before[n]) for n in adapters if "up_proj" in n)
    opt_params = {id(p) for g in brain.optimizer.param_groups for p in g["params"]}
    assert all(id(now[n]) in opt_params for n in adapters)

    # peft_freeze_base: the outer loop trains the adapters only
    frozen = toy(["lora"], peft_rank=2, peft_freeze_base=True)
    base_before = {n: p.detach().clone() for n, p in frozen.modules.named_parameters()}
    frozen.fit(range(1, 2), frozen.make_episode_loader(data), progressbar=False)
    for n, p in frozen.modules.named_parameters():
        if ".adapter_" not in n:
            assert torch.equal(p, base_before[n]), n

    # the adapters are checkpointed, even with a checkpointer holding another container
    def checkpointed(seed):
        mods = {k: v for k, v in make_toy_brain({}, seed=seed).modules.items()}
        ckpt = Checkpointer(tmp_path / "ckpt", recoverables={"model": torch.nn.ModuleDict(mods)})
        b = make_toy_brain({"meta_addons": ["lhuc"], "peft_targets": ["lin*"]}, seed=seed,
                           checkpointer=ckpt)
        return b, ckpt

    b1, ckpt = checkpointed(0)
    with torch.no_grad():
        b1.modules.lin1.lhuc_r.fill_(0.3)
    ckpt.save_checkpoint()
    b2, ckpt2 = checkpointed(0)
    ckpt2.recover_if_possible()
    assert torch.equal(b2.modules.lin1.lhuc_r, b1.modules.lin1.lhuc_r)


# ---------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft")
    csv = helpers.make_corpus(tmp / "corpus", speakers=(("s0", 4), ("s1", 4)))
    brain, yaml_path = helpers.train_tiny_brain(tmp / "exp", csv, strategy="fomaml", epochs=1)
    from sb_meta.export import export_brain

    export = export_brain(brain, tmp / "base", hparams_file=yaml_path)
    rows = helpers.read_rows(csv)
    return {"tmp": tmp, "export": export, "rows": rows, "csv": csv,
            "wavs": helpers.file_batch([r["wav"] for r in rows])}


def _support(tiny):
    rows = [r for r in tiny["rows"] if r["spk_id"] == "s1"][:3]
    return [r["wav"] for r in rows], [r["wrd"] for r in rows]


@pytest.mark.parametrize("addon", ADDONS)
def test_adapter_export_round_trip(tiny, addon):
    from sb_meta.adapt import load_model

    base = load_model(tiny["export"])
    wavs, lens = tiny["wavs"]
    base_probs = base.log_probs(wavs, lens)
    adapted = base.adapt(_support(tiny), Method(addons=[addon], steps=3, lr=0.5, addon_config={"peft_rank": 4}))
    assert adapted.has_adapters and not base.has_adapters
    assert adapted.last_adaptation["addons"] == [addon]
    # only the adapters changed: every base weight is bit-identical
    old = dict(base.named_parameters())
    new = dict(adapted.named_parameters())
    adapter_names = set(adapted.adapters["names"])
    for n, p in new.items():
        if n not in adapter_names:
            assert torch.equal(p, old[strip_wrappers(n)]), n
    assert not torch.equal(adapted.log_probs(wavs, lens), base_probs)
    torch.testing.assert_close(base.log_probs(wavs, lens), base_probs, rtol=0, atol=0)

    folder = adapted.export_adapters(tiny["tmp"] / f"adapters_{addon}")
    assert sorted(p.name for p in folder.iterdir()) == ["adapters.ckpt", "adapters.json"]
    meta = json.loads((folder / "adapters.json").read_text())
    assert meta["addons"] == [addon] and meta["config"]["peft_rank"] == 4
    assert meta["base_model"]["weights_sha256"] and meta["base_model"]["source"] == str(tiny["export"])
    saved = torch.load(folder / "adapters.ckpt", weights_only=True)
    assert set(saved) == set(adapted.adapters["names"])

    for reloaded in (load_model(tiny["export"], adapters=folder),
                     load_model(tiny["export"]).with_adapters(folder)):
        torch.testing.assert_close(reloaded.log_probs(wavs, lens), adapted.log_probs(wavs, lens),
                                   rtol=0, atol=0)
        assert reloaded.transcribe_batch(wavs, lens)[0] == adapted.transcribe_batch(wavs, lens)[0]
    # re-exporting over the folder replaces it atomically, with --force only
    from sb_meta.export import DestinationError

    with pytest.raises(DestinationError, match="--force"):
        adapted.export_adapters(folder)
    adapted.export_adapters(folder, force=True)
    # a pretrained folder holds plain layers: LoRA / LHUC are folded in, Houlsby cannot be
    if addon == "houlsby":
        with pytest.raises(ValueError, match="export them alone"):
            adapted.export(tiny["tmp"] / f"full_{addon}")
    else:
        full = load_model(adapted.export(tiny["tmp"] / f"full_{addon}"))
        assert not full.has_adapters
        torch.testing.assert_close(full.log_probs(wavs, lens), adapted.log_probs(wavs, lens),
                                   rtol=1e-5, atol=1e-5)
    # adapting it again adapts its adapters only, and keeps the base identity
    again = reloaded.adapt(_support(tiny), Method(steps=1, lr=0.5))
    assert again.adapters["base_model"] == adapted.adapters["base_model"]
    assert len(again.adapters["adaptations"]) == 2
    changed = {n for n, p in again.named_parameters()
               if not torch.equal(p, dict(reloaded.named_parameters())[n])}
    assert changed and changed <= adapter_names


def test_adapters_on_a_mismatched_base_fail(tiny):
    from sb_meta.adapt import load_model

    base = load_model(tiny["export"])
    adapted = base.adapt(_support(tiny), Method(addons=["lora"], steps=1, lr=0.5))
    folder = adapted.export_adapters(tiny["tmp"] / "adapters_mismatch")
    other = base.adapt(_support(tiny), Method(strategy="finetune", steps=1, lr=0.05))
    other_folder = other.export(tiny["tmp"] / "other_base")
    with pytest.raises(ValueError, match="made for another base model"):
        load_model(other_folder, adapters=folder)
    with pytest.raises(FileNotFoundError, match="holds no adapters"):
        base.with_adapters(tiny["tmp"] / "nowhere")
    with pytest.raises(ValueError, match="carries no adapters"):
        base.export_adapters(tiny["tmp"] / "none")
    # adapt_params narrows further, to the adapters inside ctc_lin (up-projections start at 0)
    head = base.adapt(_support(tiny), Method(addons=["lora"], adapt_params=["ctc_lin.*"], steps=2, lr=0.5))
    params = dict(head.named_parameters())
    assert params["ctc_lin.w.adapter_up_proj.weight"].abs().sum() > 0
    assert params["enc.DNN.block_0.linear.w.adapter_up_proj.weight"].abs().sum() == 0
    assert torch.equal(params["ctc_lin.w.pretrained_module.weight"],
                       dict(base.named_parameters())["ctc_lin.w.weight"])
    from sb_meta.plugins import UnknownPluginError

    with pytest.raises(UnknownPluginError, match="lora"):
        base.adapt(_support(tiny), Method(addons=["loraa"]))
    with pytest.raises(ValueError, match="meta_strategy"):
        base.adapt(_support(tiny), Method(addons=["lora"], addon_config={"meta_strategy": "maml"}))


def test_merged_lora_exports_as_a_plain_model(tiny):
    from sb_meta.adapt import load_model

    wavs, lens = tiny["wavs"]
    adapted = load_model(tiny["export"]).adapt(_support(tiny), Method(addons=["lora", "lhuc"], steps=2, lr=0.5))
    merged = adapted.merge_adapters()
    assert not merged.has_adapters
    torch.testing.assert_close(merged.log_probs(wavs, lens), adapted.log_probs(wavs, lens),
                               rtol=1e-5, atol=1e-5)
    out = merged.export(tiny["tmp"] / "merged")
    torch.testing.assert_close(load_model(out).log_probs(wavs, lens), adapted.log_probs(wavs, lens),
                               rtol=1e-5, atol=1e-5)


def test_export_brain_meta_trained_with_lora(tiny):
    """A brain meta-trained with meta_addons=[lora] exports (merged) as a plain model."""
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    brain, yaml_path = helpers.train_tiny_brain(
        tiny["tmp"] / "lora_exp", tiny["csv"], strategy="fomaml", epochs=1,
        meta={"meta_addons": ["lora"], "peft_rank": 2},
    )
    names = list(brain.addons[0].adapter_state_dict(brain))
    out = export_brain(brain, tiny["tmp"] / "lora_trained", hparams_file=yaml_path)  # verifies
    assert list(brain.addons[0].adapter_state_dict(brain)) == names  # the brain keeps its wrappers
    assert type(brain.modules.ctc_lin.w).__name__ == "LoRA"
    wavs, lens = tiny["wavs"]
    assert load_model(out).log_probs(wavs, lens).shape[-1] == 8
    assert json.loads((out / "sbmeta.json").read_text())["merged_adapters"] == ["lora"]


def test_adapter_export_is_small_on_the_an4_model(tmp_path):
    """Rank-8 LoRA adapters of the AN4 recipe's CRDNN (1.3M parameters): <= 5% of model.ckpt."""
    from hyperpyyaml import load_hyperpyyaml

    from sb_meta.adapt import load_model
    from sb_meta.data.manifest import write_manifest
    from sb_meta.export import export_brain
    from sb_meta.recipe import prepare_tokenizer

    with open(AN4_YAML, encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin, {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "exp")})
    assert hp["output_neurons"] == 40
    csv = write_manifest(tmp_path / "alphabet.csv", [dict(
        ID="a", duration=1.0, wav="a.wav", spk_id="s", wrd="ABCDEFGHIJKLMNOPQRSTUVWXYZ '")])
    prepare_tokenizer(hp, csv, tmp_path)
    brain = helpers.RECIPE.ASR(modules=hp["modules"], hparams=hp,
                               run_opts={"device": "cpu", "noprogressbar": True})
    n_params = sum(p.numel() for p in brain.modules.parameters())
    assert 1.2e6 < n_params < 1.4e6
    brain.modules.normalize._load_statistics_dict(
        {"count": 1, "glob_mean": torch.zeros(40), "glob_std": torch.ones(40)}
    )
    base = export_brain(brain, tmp_path / "an4", hparams_file=AN4_YAML)
    rng = np.random.default_rng(0)
    wavs = [torch.tensor(0.1 * rng.standard_normal(16000), dtype=torch.float32) for _ in range(2)]
    adapted = load_model(base).adapt((wavs, ["YES", "NO"]), Method(addons=["lora"], steps=1, lr=0.01, addon_config={"peft_rank": 8}))
    folder = adapted.export_adapters(tmp_path / "an4_lora")
    adapter_bytes = sum(p.stat().st_size for p in folder.iterdir())
    model_bytes = (base / "model.ckpt").stat().st_size
    ratio = adapter_bytes / model_bytes
    print(f"AN4 CRDNN rank-8 LoRA: adapters {adapter_bytes} B / model.ckpt {model_bytes} B "
          f"= {ratio:.2%} ({json.loads((folder / 'adapters.json').read_text())['parameters']} "
          f"adapter parameters of {n_params})")
    assert ratio <= 0.05


def test_cli_lists_the_peft_addons(capsys):
    from sb_meta.cli import main

    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plugins"]}
    for name in ADDONS:
        assert rows[name]["kind"] == "addon"
        assert rows[name]["module"] == "sb_meta_plugins.peft"
        assert rows[name]["distribution"].startswith("sb-meta ")
