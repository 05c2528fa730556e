"""The sb-meta plugin contract: every hook, declared once.

A plugin is a module, found through the ``sb_meta.plugins`` entry-point
group (built-ins use the same group) or named in YAML under ``plugins:``.
Functions or methods named ``sbmeta_<hook>`` implement the hooks below
(``@sb_meta.hookimpl`` is optional, as ``pytest_`` functions are in pytest).
Hooks are called with keyword arguments only; an implementation declares the
arguments it uses, in any order. A function named ``sbmeta_<something>`` that
matches no hook below is an error naming the plugin and the hook.

Where each hook is implemented is part of the contract, and checked when the
plugin loads (a hook that would never be called is an error naming the
plugin, the hook and where it belongs):

* the **registry hooks** :func:`sbmeta_strategies` and :func:`sbmeta_addons`
  are module-level functions of the plugin, called through pluggy when the
  registry is built (so pluggy's ``tryfirst``, ``trylast`` and ``wrapper``
  apply to them);
* every other hook is a **per-brain hook**: a method of the strategy or
  add-on class the plugin provides, called on the instances a brain creates,
  never on the module.

Two kinds of extension are registered through the first two hooks:

* a **strategy** (exactly one active) is the learning algorithm: a subclass of
  :class:`sb_meta.strategy.Strategy` owning the inner loop (``adapt``,
  ``inner_update``), the forward used for its tasks and the outer objective;
* an **add-on** (any number active, ``meta_addons: [a, b]``) composes with any
  strategy: a subclass of :class:`sb_meta.strategy.AddOn` whose methods
  implement the hooks below.

The active strategy and add-ons are registered with each brain; per-brain
hooks are called on them in a fixed order, the strategy first, then the
add-ons in the order ``meta_addons`` lists them (so pluggy's ordering markers
``tryfirst``, ``trylast``, ``wrapper`` and ``hookwrapper`` are refused on
per-brain hooks rather than silently ignored). Each per-brain hook receives ``brain`` (the
:class:`sb_meta.MetaBrain`, or the test-time adaptation brain, which is one
too) and, where it applies, the ``phase`` (:class:`sb_meta.contract.Phase`:
inner, outer, adapt, eval) and the ``task`` (:class:`sb_meta.episodes.Task`:
its ``name``, ``column`` and the manifest ``rows`` of its utterances; None
outside episodes).

Example
-------
>>> from sb_meta import hookspecs
>>> hook_names()[:4]
['sbmeta_strategies', 'sbmeta_addons', 'sbmeta_modules', 'sbmeta_adapt_params']
"""

import pluggy

hookspec = pluggy.HookspecMarker("sb_meta")

__all__ = ["hookspec", "hook_names"]


@hookspec
def sbmeta_strategies():
    """Return the strategy classes this plugin provides.

    Called once when the plugin registry is built.

    Returns
    -------
    list of type
        Subclasses of :class:`sb_meta.strategy.Strategy`, each with a unique
        ``name`` (the value users give to ``meta_strategy``).
    """


@hookspec
def sbmeta_addons():
    """Return the add-on classes this plugin provides.

    Called once when the plugin registry is built.

    Returns
    -------
    list of type
        Subclasses of :class:`sb_meta.strategy.AddOn`, each with a unique
        ``name`` (the value users list under ``meta_addons``).
    """


@hookspec
def sbmeta_modules(brain):
    """Declare trainable modules this plugin owns (e.g. a domain classifier).

    Called once, when the brain is built. The brain puts each module in
    ``brain.modules["sbmeta_addons"][<plugin name>][<key>]`` (parameter names
    ``sbmeta_addons.<plugin>.<key>.…``), on the brain's device; so the outer
    optimizer trains them, the brain's checkpointer saves and recovers them
    (recoverable ``sbmeta_addons``) and functional forwards can swap them.
    They are not part of the exported recognizer unless
    :func:`sbmeta_before_export` adds them, and the inner loop does not adapt
    them unless :func:`sbmeta_adapt_params` adds their names.

    Arguments
    ---------
    brain : sb_meta.MetaBrain

    Returns
    -------
    dict of str to torch.nn.Module or None
    """


@hookspec
def sbmeta_adapt_params(brain, names, phase):
    """Choose the parameters an inner loop (or test-time adaptation) adapts.

    Called on the strategy and every add-on, in order, each time a strategy
    builds its list of adapted parameters (after the ``adapt_params``
    patterns were applied); each receives the previous one's choice.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    names : list of str
        Parameter names (as in ``brain.modules.named_parameters()``) selected
        so far.
    phase : sb_meta.contract.Phase
        ``INNER`` in meta-training, ``ADAPT`` at test time.

    Returns
    -------
    list of str or None
        The names to adapt (a subset of the trainable parameters: this may
        narrow the selection, e.g. to adapter parameters, or add the plugin's
        own module parameters), or None to leave it unchanged.
    """


@hookspec
def sbmeta_transform_batch(brain, batch, task, phase):
    """Transform a batch before the forward pass (e.g. data augmentation).

    Called on the strategy and every add-on, in order (each receives the
    previous one's batch), before every forward of the inner loop, the outer
    objective and test-time adaptation; in the ``EVAL`` phase too, where
    plugins normally return None.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    batch : speechbrain.dataio.batch.PaddedBatch
    task : sb_meta.episodes.Task or None
    phase : sb_meta.contract.Phase

    Returns
    -------
    PaddedBatch or None
        A new batch (the input must not be modified in place: support sets
        are reused across inner steps), or None to leave it unchanged. A
        transform that changes the number of utterances must keep every
        per-utterance field (``id``, ``tokens``, ``wrd``...) aligned.
    """


@hookspec
def sbmeta_loss(brain, batch, predictions, loss, task, phase):
    """Add terms to a training objective.

    Called on the strategy and every add-on after each forward in the
    ``INNER``, ``OUTER`` and ``ADAPT`` phases (never in ``EVAL``), inside the
    functional forward, so terms are differentiable w.r.t. the fast weights.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    batch : speechbrain.dataio.batch.PaddedBatch
        The batch after :func:`sbmeta_transform_batch`.
    predictions : object
        What ``compute_forward`` returned: :class:`sb_meta.contract.ASRPredictions`
        for the recipes and test-time adaptation
        (``ASRPredictions.coerce`` reads a plain recipe's tuple).
    loss : torch.Tensor
        The recipe's objective on this batch.
    task : sb_meta.episodes.Task or None
    phase : sb_meta.contract.Phase

    Returns
    -------
    torch.Tensor, dict of str to torch.Tensor, or None
        A scalar added to the loss, or named scalars (all added; the names
        appear in the training log as ``<plugin>_<name>``).
    """


@hookspec
def sbmeta_after_adapt(brain, params, task, phase):
    """Post-process a task's fast weights once its inner loop has finished.

    Called on the strategy and every add-on, in order, at the end of every
    :meth:`sb_meta.strategy.Strategy.adapt`: each inner loop of
    meta-training (``INNER``) and each test-time adaptation (``ADAPT``).

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    params : sb_meta.contract.FastWeights
        The adapted parameters (and the strategy's task state).
    task : sb_meta.episodes.Task or None
    phase : sb_meta.contract.Phase

    Returns
    -------
    FastWeights or dict or None
        Replacement parameters (a plain dict keeps the strategy's task
        state), or None to keep them.
    """


@hookspec
def sbmeta_before_export(brain, plan):
    """Change a model on its way into a SpeechBrain pretrained folder.

    Called on the strategy and every add-on, in order, after the export plan
    is assembled and before anything is written: by the recipes' export at
    the end of training and by :meth:`sb_meta.adapt.AdaptableASR.export` for
    adapted models. Plugins may replace the modules that are saved (prune or
    quantize them, fold adapters into the weights), change what the folder's
    ``hyperparams.yaml`` declares, add files or record metadata.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
        The brain whose model is exported (for adapted models: the test-time
        adaptation brain over the model's own modules).
    plan : sb_meta.export.ExportPlan
        What will be written; see its documentation.

    Returns
    -------
    None
    """


@hookspec
def sbmeta_adapter_state(brain):
    """The tensors of this plugin that travel without the model (adapters).

    Called when an adapted model's adapters are exported alone
    (:meth:`sb_meta.adapt.AdaptableASR.export_adapters`) and when a loaded
    model is checked for adapters.

    Arguments
    ---------
    brain : sb_meta.MetaBrain

    Returns
    -------
    dict of str to torch.Tensor or None
        Detached tensors keyed by parameter name, or None when the plugin has
        none.
    """


@hookspec
def sbmeta_load_adapter_state(brain, state):
    """Put exported adapter tensors back into a freshly built model.

    Called on every active plugin with the whole state read from an
    adapter-only export; each takes its own entries (those its
    :func:`sbmeta_adapter_state` returns).

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    state : dict of str to torch.Tensor

    Returns
    -------
    list of str or None
        The names it loaded (the core checks every name was taken by one plugin).
    """


def hook_names():
    """Names of every hook, in the order they are declared above."""
    return [name for name, value in globals().items() if name.startswith("sbmeta_") and callable(value)]
