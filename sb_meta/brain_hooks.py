"""How a :class:`sb_meta.brain.MetaBrain` calls its plugins' per-brain hooks.

:class:`PluginHookCalls` is the part of ``MetaBrain`` that calls the hooks of
its strategy and add-ons (:mod:`sb_meta.hookspecs`): the strategy first, then
the add-ons in ``meta_addons`` order, each implementation given the arguments
it declares, and an error raised inside one naming the plugin, the hook and
the phase. It also keeps the running means of the plugins' named loss terms.
It reads what ``MetaBrain.__init__`` sets up: the per-brain plugin manager
``_pm``, the plugins in call order ``_plugins`` and the loss-term sums
``_term_sums``.

Authors
 * sb-meta contributors
"""

import contextlib
import functools

from sb_meta.contract import FastWeights, Phase
from sb_meta.plugins import PluginHookError

__all__ = ["PluginHookCalls"]


#: errors whose type says what went wrong (bad configuration, missing files): a failing hook keeps
#: the type and its message gains the plugin and the hook; any other error becomes a PluginHookError
_KEPT_ERRORS = (ValueError, LookupError, FileNotFoundError, FileExistsError, PermissionError, ImportError)


def _call_named(plugin, hook, function, argnames, kwargs):
    """``function`` (``plugin``'s implementation of ``hook``) with the arguments it declares;
    an exception it raises names the plugin, the hook and the phase, in one line."""
    try:
        return function(**{k: kwargs[k] for k in argnames})
    except Exception as exc:
        if getattr(exc, "_sbmeta_hook", False):  # a hook called inside this one already said so
            raise
        phase = kwargs.get("phase")
        where = f"plugin {getattr(plugin, 'name', type(plugin).__name__)!r}, hook {hook}" + (
            f", phase {Phase(phase).value}" if phase is not None else "")
        if isinstance(exc, _KEPT_ERRORS) and len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (f"{where}: {exc.args[0]}",)
            exc._sbmeta_hook = True
            raise
        error = PluginHookError(f"{where}: {type(exc).__name__}: {exc}")
        error._sbmeta_hook = True
        raise error from exc


class PluginHookCalls:
    """The hook calls of :class:`sb_meta.brain.MetaBrain` (a mixin; see the module docstring)."""

    def call_hook(self, name, **kwargs):
        """Call hook ``name`` on the strategy, then on each add-on, in order.

        Returns ``[(plugin, result)]`` for the plugins implementing it. Each
        implementation receives the arguments it declares (``brain`` is
        always available).
        """
        kwargs["brain"] = self
        return [(plugin, call(kwargs)) for plugin, call in self._impls(name)]

    def _impls(self, name):
        """``[(plugin, call)]`` of hook ``name`` in call order; ``call(kwargs)``
        passes each implementation the arguments it declares."""
        impls = {id(i.plugin): i for i in getattr(self._pm.hook, name).get_hookimpls()}
        out = []
        for plugin in self._plugins:
            impl = impls.get(id(plugin))
            if impl is not None:
                call = functools.partial(_call_named, plugin, name, impl.function, impl.argnames)
                out.append((plugin, call))
        return out

    def choose_adapted(self, names, phase=Phase.INNER):
        """``names`` after every plugin's ``sbmeta_adapt_params``."""
        allowed = set(self.trainable_params())
        for plugin, chosen in self.call_hook("sbmeta_adapt_params", names=list(names), phase=phase):
            if chosen is None:
                continue
            unknown = [n for n in chosen if n not in allowed]
            if unknown:
                raise ValueError(
                    f"{plugin.name}: sbmeta_adapt_params returned names that are not trainable "
                    f"parameters: {unknown[:5]}"
                )
            names = list(chosen)
        return names

    def transform_batch(self, batch, task=None, phase=Phase.OUTER):
        """``batch`` after every plugin's ``sbmeta_transform_batch``, in order."""
        for _, call in self._impls("sbmeta_transform_batch"):
            new = call({"brain": self, "batch": batch, "task": task, "phase": phase})
            if new is not None:
                batch = new
        return batch

    def add_loss_terms(self, batch, predictions, loss, task=None, phase=Phase.OUTER):
        """``loss`` plus the plugins' ``sbmeta_loss`` terms (none in ``EVAL``).

        Named terms are averaged for the training log (:meth:`loss_term_means`).
        """
        if phase is Phase.EVAL or not self._plugins:
            return loss
        for plugin, terms in self.call_hook(
            "sbmeta_loss", batch=batch, predictions=predictions, loss=loss, task=task, phase=phase
        ):
            if terms is None:
                continue
            if not isinstance(terms, dict):
                terms = {"loss": terms}
            for key, term in terms.items():
                if term is None:
                    continue
                loss = loss + term
                name = f"{Phase(phase).value}_{plugin.name}_{key}"
                total, count = self._term_sums.get(name, (0.0, 0))
                self._term_sums[name] = (total + float(term.detach()), count + 1)
        return loss

    def loss_term_means(self, reset=True):
        """Mean of every named plugin loss term since the last reset, e.g.
        ``{"outer_dann_domain": 0.69}`` (recipes add them to the train log)."""
        means = {k: total / max(count, 1) for k, (total, count) in sorted(self._term_sums.items())}
        if reset:
            self._term_sums = {}
        return means

    @contextlib.contextmanager
    def uncounted_loss_terms(self):
        """Plugin loss terms added inside the block are left out of :meth:`loss_term_means`."""
        kept = dict(self._term_sums)
        yield
        self._term_sums = kept

    def after_adapt(self, params, task=None, phase=Phase.INNER):
        """``params`` after every plugin's ``sbmeta_after_adapt``, in order."""
        if not isinstance(params, FastWeights):
            params = FastWeights(params)
        for _, call in self._impls("sbmeta_after_adapt"):
            new = call({"brain": self, "params": params, "task": task, "phase": phase})
            if new is not None:
                params = new if isinstance(new, FastWeights) else params.replace(new)
        return params
