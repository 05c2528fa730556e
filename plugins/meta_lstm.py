"""Built-in ``meta_lstm`` strategy: a learned, coordinate-wise LSTM optimizer for the inner loop.

In the spirit of Ravi & Larochelle (2017), whose meta-learner LSTM has the
learner's parameters as its cell state, with Andrychowicz et al.'s (2016)
coordinate-wise LSTM over preprocessed gradients. For every adapted
coordinate ``theta`` (all coordinates of all adapted tensors form one batch,
so the same small network serves the ~1.3M coordinates of the AN4 CRDNN)::

    x_t       = [pre(g_t), pre(L_t)]                    gradient and inner loss, log/sign preprocessed
    h_t, c_t  = LSTMCell(x_t, (h_{t-1}, c_{t-1}))       hidden size ``meta_lstm_hidden`` (default 4)
    i_t       = sigmoid(W_i [h_t, theta_{t-1}, i_{t-1}] + b_i)     learned step size (input gate)
    f_t       = sigmoid(W_f [h_t, theta_{t-1}, f_{t-1}] + b_f)     learned shrinkage (forget gate)
    theta_t   = f_t * theta_{t-1} - i_t * g_t           the cell-state update of the paper

``pre(x)`` is ``(log|x| / p, sign x)`` when ``|x| >= exp(-p)`` and
``(-1, exp(p) x)`` otherwise (p = 10). At initialisation ``i_t = inner_lr``
(``b_i = logit(inner_lr)``) and ``f_t ~ 1`` (``b_f = 8``), with the gate weights
small: the optimizer starts as plain SGD at the configured step size and
learns from there. The network's parameters are the strategy's
``meta_modules`` (``sbmeta_meta_lstm.*``): optimized by the outer optimizer,
checkpointed with the model, exported (``meta_strategy.ckpt``) and used
again by ``sb-meta adapt --strategy meta_lstm`` on an exported model.

Meta-gradient
-------------
``first_order: False`` (the default) differentiates the query loss through
every inner step, gradients included (second order). ``first_order: True``
treats the inner gradients as constants but keeps the update rule in the
graph across the steps: ``theta_T`` is a function of the network's
parameters through every ``i_t`` / ``f_t``, while the initial weights get the
first-order (FOMAML) gradient. The inner loss enters detached (as in
Andrychowicz et al., who drop the second derivatives of the optimizee).

Cost
----
The LSTM runs over every adapted coordinate at each inner step, and the
first-order meta-gradient keeps the update rule's graph, so its memory is
MAML's; at test time the optimizer runs without a graph. The documentation's
benchmarks page gives seconds and memory per task against MAML and FOMAML.

Options (hparams, see :class:`sb_meta.options.Configurable`): ``meta_lstm_hidden`` (4),
``meta_lstm_preprocess_p`` (10.0).
"""

import math

import torch

from sb_meta.plugins import hookimpl
from sb_meta.strategy import GradientStrategy

__all__ = ["MetaLSTMOptimizer", "MetaLSTM", "preprocess"]


def preprocess(x, p=10.0):
    """Andrychowicz et al.'s gradient preprocessing: ``[..., 2]`` features of ``x``.

    Example
    -------
    >>> preprocess(torch.tensor([1e-6, -1.0, 0.0]), p=10.0)
    tensor([[-1.0000,  0.0220],
            [ 0.0000, -1.0000],
            [-1.0000,  0.0000]])
    """
    threshold = math.exp(-p)
    big = x.abs() >= threshold
    log_part = torch.log(x.abs().clamp_min(threshold)) / p
    first = torch.where(big, log_part, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([first, second], dim=-1)


class MetaLSTMOptimizer(torch.nn.Module):
    """The coordinate-wise learned optimizer (see the module documentation).

    Arguments
    ---------
    hidden : int
        Hidden size of the coordinate-wise LSTM.
    inner_lr : float
        Initial step size (the input gate's bias is ``logit(inner_lr)``).
    p : float
        Preprocessing constant.

    Example
    -------
    >>> opt = MetaLSTMOptimizer(hidden=4, inner_lr=0.1)
    >>> theta, g = torch.zeros(5), torch.ones(5)
    >>> new, state = opt.step(theta, g, torch.tensor(2.0), None)
    >>> bool(torch.allclose(new, -0.1 * g, atol=1e-2))
    True
    """

    def __init__(self, hidden=4, inner_lr=0.05, p=10.0):
        super().__init__()
        if not 0.0 < float(inner_lr) < 1.0:
            raise ValueError(f"meta_lstm needs 0 < inner_lr < 1 (the input gate is a sigmoid), got {inner_lr!r}")
        self.hidden, self.p = int(hidden), float(p)
        self.cell = torch.nn.LSTMCell(4, self.hidden)
        self.input_gate = torch.nn.Linear(self.hidden + 2, 1)
        self.forget_gate = torch.nn.Linear(self.hidden + 2, 1)
        with torch.no_grad():
            for gate in (self.input_gate, self.forget_gate):
                gate.weight.uniform_(-0.01, 0.01)
            self.input_gate.bias.fill_(math.log(inner_lr / (1.0 - inner_lr)))
            self.forget_gate.bias.fill_(8.0)

    def fix_to_sgd(self, lr):
        """Make the update exactly ``theta - lr * g`` (zero gate weights, saturated forget gate)."""
        with torch.no_grad():
            for gate in (self.input_gate, self.forget_gate):
                gate.weight.zero_()
            self.input_gate.bias.fill_(math.log(lr / (1.0 - lr)))
            self.forget_gate.bias.fill_(60.0)  # sigmoid(60) == 1 in float32 and float64
        return self

    def step(self, theta, grad, loss, state):
        """One update of the flat coordinates ``theta`` ``[N]`` with gradients ``grad``.

        Returns ``(new theta, new state)``; ``state`` is None at the first step.
        """
        n = theta.shape[0]
        dtype = self.input_gate.weight.dtype
        theta_in, grad_in = theta.to(dtype), grad.to(dtype)
        if state is None:
            zeros = theta_in.new_zeros(n, self.hidden)
            state = {"h": zeros, "c": zeros, "i": theta_in.new_zeros(n), "f": theta_in.new_ones(n)}
        x = torch.cat([preprocess(grad_in, self.p),
                       preprocess(loss.to(dtype).reshape(1), self.p).expand(n, 2)], dim=-1)
        h, c = self.cell(x, (state["h"], state["c"]))
        i = torch.sigmoid(self.input_gate(torch.cat([h, theta_in[:, None], state["i"][:, None]], -1)))[:, 0]
        f = torch.sigmoid(self.forget_gate(torch.cat([h, theta_in[:, None], state["f"][:, None]], -1)))[:, 0]
        new = f * theta_in - i * grad_in
        return new.to(theta.dtype), {"h": h, "c": c, "i": i, "f": f}


class MetaLSTM(GradientStrategy):
    """Meta-LSTM: inner-loop updates produced by a meta-learned coordinate-wise LSTM."""

    name = "meta_lstm"
    default_first_order = False
    options = {"meta_lstm_hidden": 4, "meta_lstm_preprocess_p": 10.0}

    def __init__(self, brain, config):
        super().__init__(brain, config)
        hidden = self.option("meta_lstm_hidden")
        p = self.option("meta_lstm_preprocess_p")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"meta_lstm_hidden must be an integer >= 1, got {hidden!r}")
        dtype = next(iter(brain.base_params().values())).dtype if brain.base_params() else torch.float32
        self.net = MetaLSTMOptimizer(hidden, float(config["inner_lr"]), float(p)).to(dtype)

    def meta_modules(self):
        return {"meta_lstm": self.net}

    def inner_update(self, params, grads, step, state):
        """One learned step over all adapted coordinates at once (see the module documentation)."""
        names = list(params)
        first_order = not any(w.requires_grad for w in params.values())
        # meta-training keeps the update rule in the graph; test-time adaptation
        # (modules in eval mode) needs no graph at all
        keep_graph = self.net.training
        carried = state.get("meta_lstm_theta")
        current = carried if (first_order and keep_graph and carried is not None) else params
        theta = torch.cat([current[n].reshape(-1) for n in names])
        grad = torch.cat([(grads[n] if grads[n] is not None else torch.zeros_like(params[n])).reshape(-1)
                          for n in names])
        loss = getattr(self, "last_inner_loss", None)
        loss = torch.zeros((), device=theta.device) if loss is None else loss.detach()
        with torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()):
            flat, state["meta_lstm"] = self.net.step(theta, grad, loss, state.get("meta_lstm"))
        new, offset = {}, 0
        for n in names:
            size = params[n].numel()
            new[n] = flat[offset:offset + size].view_as(params[n])
            offset += size
        if first_order and keep_graph:
            state["meta_lstm_theta"] = new
        return new

    def load_state(self, state):
        """Load an exported optimizer (its hidden size is read from the state)."""
        key = "meta_lstm.cell.weight_hh"
        if key not in state:
            raise ValueError(f"the meta-learned state is not a meta_lstm optimizer's (no {key})")
        hidden = int(state[key].shape[1])
        if hidden != self.net.hidden:
            dtype = self.net.input_gate.weight.dtype
            self.net = MetaLSTMOptimizer(hidden, float(self.config["inner_lr"])).to(dtype)
            self.brain.modules["sbmeta_meta_lstm"] = self.net.to(self.brain.device)
        return super().load_state(state)


@hookimpl
def sbmeta_strategies():
    return [MetaLSTM]
