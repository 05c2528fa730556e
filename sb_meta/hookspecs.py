"""The sb-meta plugin contract: every hook, declared once.

A plugin is a module (or object) implementing some of the hooks below with
``@sb_meta.hookimpl``. Plugins are found through the ``sb_meta.plugins``
entry-point group (built-ins use the same group) or named in YAML under
``plugins:``. Hooks are called with keyword arguments only, as in pluggy and
pytest.

Two kinds of extension are registered through hooks:

* a **strategy** (exactly one active) is the learning algorithm: a subclass of
  :class:`sb_meta.strategy.Strategy` owning the inner loop (``adapt``) and the
  outer objective;
* an **add-on** (any number active) composes with any strategy: a subclass of
  :class:`sb_meta.strategy.AddOn` whose hook implementations add loss terms,
  choose which parameters adapt, or post-process an adapted model.

Example
-------
>>> from sb_meta import hookspecs
>>> sorted(n for n in dir(hookspecs) if n.startswith("sbmeta_"))[:3]
['sbmeta_adapt_params', 'sbmeta_addons', 'sbmeta_after_adapt']
"""

import pluggy

hookspec = pluggy.HookspecMarker("sb_meta")


@hookspec
def sbmeta_strategies():
    """Return the strategy classes this plugin provides.

    Called once when the plugin manager is built.

    Returns
    -------
    list of type
        Subclasses of :class:`sb_meta.strategy.Strategy`, each with a unique
        ``name`` (the value users give to ``meta_strategy``).
    """


@hookspec
def sbmeta_addons():
    """Return the add-on classes this plugin provides.

    Called once when the plugin manager is built.

    Returns
    -------
    list of type
        Subclasses of :class:`sb_meta.strategy.AddOn`, each with a unique
        ``name`` (the value users list under ``meta_addons``).
    """


@hookspec
def sbmeta_adapt_params(brain, names):
    """Narrow the parameters the inner loop adapts.

    Called on every active add-on when a strategy builds its list of
    adaptable parameters (after ``adapt_params`` patterns were applied).

    Arguments
    ---------
    brain : sb_meta.MetaBrain
        The brain being trained or adapted.
    names : list of str
        Parameter names (as in ``brain.modules.named_parameters()``) selected
        so far.

    Returns
    -------
    list of str or None
        The names to adapt, or None to leave the selection unchanged.
    """


@hookspec
def sbmeta_inner_loss(brain, batch, predictions, loss):
    """Add a term to the inner-loop (support-set) loss.

    Called on every active add-on at each inner step, inside the functional
    forward, so terms are differentiable w.r.t. the fast weights.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    batch : speechbrain.dataio.batch.PaddedBatch
        The support batch.
    predictions : object
        What ``compute_forward`` returned.
    loss : torch.Tensor
        The recipe's objective on this batch.

    Returns
    -------
    torch.Tensor or None
        A scalar added to the loss.
    """


@hookspec
def sbmeta_outer_loss(brain, batch, predictions, loss):
    """Add a term to the outer (query-set) loss. Same contract as
    :func:`sbmeta_inner_loss`, evaluated with the adapted fast weights."""


@hookspec
def sbmeta_after_adapt(brain, params):
    """Post-process fast weights after test-time adaptation.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    params : dict of str to torch.Tensor
        The adapted parameters.

    Returns
    -------
    dict or None
        Replacement parameters, or None to keep them.
    """


@hookspec
def sbmeta_before_export(brain, folder):
    """Called before an adapted model is written to ``folder`` in
    SpeechBrain's pretrained format (e.g. to prune or quantize it).

    Returns
    -------
    None
    """
