"""The steps of :meth:`sb_meta.adapt.AdaptableASR.adapt`: check, build, prepare, update, record.

:func:`adapt_model` runs them in order: :func:`sb_meta.adapt.plan.plan` validates the
:class:`~sb_meta.adapt.method.Method` against the model (strategy, add-ons and
their options, steps, step size) before any work; :func:`start` copies the
model, builds its :class:`~sb_meta.adapt.objective.AdaptBrain`
(:func:`~sb_meta.adapt.plan.build_brain`) and reads the
support into an :class:`~sb_meta.adapt.testtime.AdaptationRun`; the active
test-time methods prepare it; :func:`update` takes the steps (a test-time
method's own, or the strategy's gradient steps on the support's labels) and
:func:`finish` writes the adapted weights and the provenance record.
"""

import contextlib
import copy

import speechbrain as sb
import torch

from sb_meta.adapt.divergence import AdaptationError, check_divergence
from sb_meta.adapt.method import Method, Support
from sb_meta.adapt.plan import build_brain, plan
from sb_meta.adapt.support import ctc_min_frames, prepare_support
from sb_meta.adapt.testtime import AdaptationRun, TestTimeMethod
from sb_meta.contract import Phase
from sb_meta.export.plan import now
from sb_meta.functional import frozen_statistics, select_params

__all__ = ["adapt_model", "start", "update", "finish"]


def adapt_model(model, support, method):
    """``model`` adapted to ``support`` with ``method`` (a new model; see :meth:`AdaptableASR.adapt`)."""
    support = Support.coerce(support)
    method = Method.coerce(method, model.registry)
    checked = plan(model, method)  # refuses before any work what cannot run (a guard included)
    if method.guard:
        from sb_meta.adapt.safeguard import guarded_adapt

        return guarded_adapt(model, support, method)
    run = start(model, support, checked)
    for addon in _test_time(run.brain):
        log = addon.prepare(run)
        if log is not None:
            run.logs[addon.name] = log
        if run.stopped:
            return model.unchanged(checked.strategy, run.records, run.asr, run.brain,
                                   stopped=run.stopped, test_time=run.logs)
    fast, support_loss = update(run, checked)
    return finish(run, checked, fast, support_loss)


def _test_time(brain):
    return [a for a in brain.addons if isinstance(a, TestTimeMethod)]


def start(model, support, checked):
    """The :class:`AdaptationRun` of ``support`` on a copy of ``model``, its brain built."""
    from sb_meta.episodes import Task

    if not checked.reads_transcripts:
        support = Support(support.audio, None, support.ids, support.task)  # never read
    elif support.transcripts is None:
        raise ValueError("give the support transcripts, or a test-time method that adapts from the "
                         f"audio alone (of {', '.join(model.registry.addon_names('test_time')) or 'none registered'})")
    view = model.view
    wavs, tokens, names, records = prepare_support(
        support.audio, support.transcripts, support.ids, model.asr.audio_normalizer, model.tokenizer,
        view.blank_index)
    method = checked.method
    asr = model.copy_interface()
    brain = build_brain(model, asr, checked)
    rows = {r["id"] or n: {"wav": r["audio"], "wrd": r["transcript"]} for r, n in zip(records, names)}
    task = Task(str(support.task) if support.task is not None else "adapt", list(rows), [], rows=rows)
    size = len(wavs) if not method.batch_size else int(method.batch_size)
    run = AdaptationRun(model, asr, brain, wavs, tokens, names, records, method.steps, method.lr, None, task, size)
    run.names_to_adapt = _names_to_adapt(model, brain, checked)
    return run


def _names_to_adapt(model, brain, checked):
    """The parameters the update adapts (None: the strategy's)."""
    adapt_params, carried = checked.method.adapt_params, model.adapters
    names = brain.strategy.load_state(model.meta_state) if checked.uses_state else None
    if adapt_params:
        chosen = select_params(brain.base_param_names(), adapt_params)
        if names is not None:
            extra = [n for n in chosen if n not in set(names)]
            if extra:
                raise ValueError(
                    f"adapt_params selects parameters without meta-learned step sizes: {extra[:5]}; "
                    f"they exist for {len(names)} parameters such as {names[:3]}")
        names = brain.choose_adapted(chosen, Phase.ADAPT)
        if not names:
            raise ValueError(f"adapt_params {adapt_params} selects no parameter the add-ons {checked.addons} adapt")
    if carried:  # adapt the adapters this model carries, nothing else
        pool = names if names is not None else brain.base_param_names()
        names = [n for n in pool if n in set(carried["names"])]
        if not names:
            raise ValueError(f"adapt_params {adapt_params} selects none of the model's adapter parameters "
                             f"(such as {carried['names'][:3]})")
    return names


def update(run, checked):
    """``(fast weights, support loss record or None)``: a test-time method's update, else the
    strategy's gradient steps on the support's labels (none without labels)."""
    brain = run.brain
    cudnn_off = (torch.backends.cudnn.flags(enabled=False)
                 if str(run.model.device).startswith("cuda") else contextlib.nullcontext())
    for addon in _test_time(brain):
        with cudnn_off:
            done = addon.update(run)
        if done is not None:
            fast, log = done
            run.logs[addon.name] = dict(run.logs.get(addon.name) or {}, **log)
            return fast, None
    if run.tokens is None:  # nothing to learn from: the preparation was the adaptation
        run.steps = 0
        return {}, None
    with torch.no_grad():  # the scale divergence is judged against
        base_largest = max((float(p.abs().max()) for p in brain.trainable_params().values() if p.numel()),
                           default=1.0)
    batches = run.batches()
    if "ctc" in brain.view.losses:
        check_lengths(brain, batches, run)
    with cudnn_off, torch.enable_grad():
        fast = brain.strategy.adapt(batches, steps=run.steps, lr=run.lr, names=run.names_to_adapt,
                                    task=run.task, phase=Phase.ADAPT)
    losses = [float(x) for x in getattr(brain.strategy, "inner_losses", None) or []]
    if not losses:
        return fast, None
    # the loss after the last step too; the add-ons' loss-term means cover the steps only
    with torch.no_grad(), frozen_statistics(brain.modules), brain.uncounted_loss_terms():
        after = brain.strategy.loss(fast, batches[run.steps % len(batches)], Phase.ADAPT, run.task)
    losses.append(float(after))
    step_size = f"lr {float(run.lr):g}" if run.lr is not None else (
        "the meta-learned step sizes" if checked.uses_state else f"lr {brain.meta_config['inner_lr']:g} "
        "(the model's inner_lr)")
    check_divergence(losses, fast, base_largest, step_size)
    return fast, {"before": losses[0], "after": losses[-1]}


def check_lengths(brain, batches, run):
    """Every support utterance long enough for its transcript under CTC."""
    with torch.no_grad():
        for start_at, batch in zip(range(0, len(run.tokens), run.batch_size), batches):
            pred = brain.compute_forward(batch, sb.Stage.TEST)
            frames = torch.round(pred.lengths.cpu() * pred.log_probs.shape[1]).long().tolist()
            for i, n in enumerate(frames, start_at):
                if n < ctc_min_frames(run.tokens[i]):
                    raise ValueError(
                        f"{run.names[i]} is too short for its transcript {run.records[i]['transcript']!r}: "
                        f"{n} output frames, CTC needs {ctc_min_frames(run.tokens[i])}")


def finish(run, checked, fast, support_loss):
    """The adapted model: ``fast`` written into the copy, frozen, with its provenance record."""
    from sb_meta.adapt.adapters import adapters_record

    brain, model, method = run.brain, run.model, checked.method
    params = brain.trainable_params()
    with torch.no_grad():
        for n, w in fast.items():
            if not torch.isfinite(w).all():
                raise AdaptationError(f"adaptation diverged (non-finite values in {n}); lower the step size")
            params[n].copy_(w.detach())
    final_loss = getattr(brain.strategy, "last_inner_loss", None)
    record = {
        "time": now(), "source": model.source, "strategy": checked.strategy, "steps": run.steps,
        "lr": float(method.lr) if method.lr is not None else (
            "meta-learned" if checked.uses_state else brain.meta_config["inner_lr"]),
        "adapt_params": list(method.adapt_params) if method.adapt_params else None,
        "adapted_parameters": len(fast), "losses": list(brain.view.losses), "support": run.records,
        "last_inner_loss": float(final_loss) if final_loss is not None else None,
    }
    if support_loss is not None:
        record["support_loss"] = support_loss
    if run.logs:
        record["test_time"] = run.logs
    if checked.addons:
        record["addons"], record["addon_config"] = list(checked.addons), dict(checked.addon_config)
    carried = model.adapters
    adapters = copy.deepcopy(carried) if carried else adapters_record(brain, model, checked.addons,
                                                                      checked.addon_config)
    if adapters is not None:
        adapters["adaptations"] = list(adapters.get("adaptations") or []) + [record]
    return model.derived(run.asr, record, adapters=adapters, brain=brain)
