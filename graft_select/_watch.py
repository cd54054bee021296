"""The forward hooks behind GraftBatchSampler.watch(): the head's input and output.

``watch(model)`` hooks the model's head: the ``torch.nn.Linear`` whose output the
model returns (or computes its output from, e.g. through ``log_softmax``), found
at the model's first forward from the outputs themselves and, where needed, the
autograd graph; or the layer named by ``layer=``. A model whose head cannot be
told (two heads returned, an output computed from several layers) is reported
at ``observe()`` with the candidates' names, never guessed; so is a model whose
output is computed from a Linear but is not that layer's logits (a temperature,
a cosine classifier's normalisation, a head that is not a Linear): the hooked
values would not be the model's.

The hooks never raise into the user's forward: a forward that gives no usable
values (a tuple or dict output, a 3-D input) is recorded as such, and
``observe()`` reports it.

This module imports torch; only the sampler's parts import it.
"""

import collections.abc

import torch

__all__ = ["LastLayerCapture", "check_watched"]


class LastLayerCapture:  # public as graft_select.sampler.LastLayerCapture
    """Forward hooks that keep the latest input and output of the model's head.

    Returned by :meth:`GraftBatchSampler.watch`; :meth:`remove` detaches them.
    The kept tensors are detached (no copy, no host transfer).

    Parameters
    ----------
    layer : torch.nn.Module or None
        The hooked layer (normally the ``torch.nn.Linear`` producing logits);
        None to find the head of ``model`` at its first forward.
    model : torch.nn.Module, default=None
        The model; its forwards are counted (so that :meth:`observe` can tell
        a layer that did not run from a model that did not), and without
        ``layer`` its head is the ``torch.nn.Linear`` whose output it returns.
    per_token : bool, default=False
        Keep the layer's input and output whatever their trailing shape, as
        long as they are tensors with the same leading dimensions (a causal
        LM's head: ``(b, T, d)`` in, ``(b, T, V)`` out), for code that turns
        them into per-sample gradients itself (``observe(gradients=...)``).
        :meth:`GraftBatchSampler.watch` never sets it: ``observe()`` without
        values needs ``(b, d)`` embeddings and ``(b, C)`` logits.
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        The training loss, which says how the model's output may be computed
        from the head's when the head is found through the autograd graph:
        with ``"cross_entropy"`` it may be the head's output, its
        ``log_softmax`` (a shift per row) or its ``softmax``, which give the
        same residuals; with ``"mse"`` only the head's output itself (reshaped
        or cast). Anything else is reported at ``observe()``.

    Attributes
    ----------
    layer : torch.nn.Module or None
        The hooked layer (None until the head is found).
    inputs, outputs : tensor or None
        The layer's input (embeddings) and output (logits) at the latest
        forward pass not yet recorded by :meth:`GraftBatchSampler.observe`.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
    ...                             torch.nn.Linear(3, 2))
    >>> sampler = GraftBatchSampler(10, batch_size=5, targets=torch.arange(10) % 2)
    >>> capture = sampler.watch(model)
    >>> batch = next(iter(sampler))
    >>> _ = model(torch.randn(5, 4))
    >>> capture.layer is model[2], tuple(capture.inputs.shape), tuple(capture.outputs.shape)
    (True, (5, 3), (5, 2))
    >>> sampler.observe()  # this batch's indices, embeddings, logits and targets
    >>> sorted(sampler.state_dict()["store"])
    ['embeddings', 'residuals']
    """

    __module__ = "graft_select.sampler"

    def __init__(self, layer, *, model=None, per_token=False, loss="cross_entropy"):
        self.layer = layer
        self.per_token = per_token
        self.model = model
        self.inputs = self.outputs = None
        self.rows = []  # rows of each forward of the layer since the last take()
        self.modes = []  # (autograd on, training) of each of those forwards
        self.problem = None  # why the latest forward of the layer gave no values
        self.model_forwards = 0  # forwards of the model since the last take()
        self.error = None  # why the head cannot be found (permanent)
        self._names = {} if model is None else {m: n for n, m in model.named_modules()}
        self._finder = None
        if layer is None:
            self._finder = _HeadFinder(model, loss)
            self._handles = self._finder.hooks()
        else:
            self._handles = [layer.register_forward_hook(self._hook, with_kwargs=True)]
        self._model_handle = self._model_pre_handle = None
        self._head_calls = 0  # calls of the hooked layer in the model's current forward
        self._tokens = None  # (input, output) of a per-token head, pooled by the model hook
        if model is not None and model is not layer:
            self._model_handle = model.register_forward_hook(self._model_hook,
                                                             with_kwargs=True)
            self._model_pre_handle = model.register_forward_pre_hook(self._model_pre_hook)

    def _model_pre_hook(self, module, args):
        self._head_calls = 0

    def _hook(self, module, args, kwargs, output):
        self._head_calls += 1
        self.modes.append((torch.is_grad_enabled(), module.training))
        try:  # the user's forward must never fail because of watch()
            self._record(args[0] if args else next(iter(kwargs.values()), None), output)
        except Exception as exc:  # reported by observe(), never raised here
            self.inputs = self.outputs = None
            self.rows.append(None)
            self.problem = f"made its hook fail ({type(exc).__name__}: {exc})"

    def _record(self, x, output):
        """Keep ``x`` and ``output`` if they are a (b, d) input and a (b, C) output (with
        ``per_token``: tensors of the same leading dimensions)."""
        self.inputs = self.outputs = None
        self.problem = (_per_token_problem if self.per_token else _problem)(x, output)
        self.rows.append(output.shape[0] if self.problem is None else None)
        self._tokens = None
        if self.problem is None:
            self.inputs, self.outputs = x.detach(), output.detach()
        elif (not self.per_token and _per_token_problem(x, output) is None
              and output.ndim == 3):
            self._tokens = (x.detach(), output.detach())  # a head applied per token

    def _pool(self, output):
        """Where the model returns one token's logits per sample of a per-token head (a
        decoder's sequence classifier, pooling at each sequence's last token), keep that
        token's embeddings and logits: the (b, C) output whose rows each equal the head's
        output at a token whose input is the same for every token that matches."""
        x, out = self._tokens
        for pooled in _tensors(output):
            if pooled.shape != (out.shape[0], out.shape[2]) or pooled.dtype != out.dtype:
                continue
            match = (out == pooled.detach()[:, None, :].to(out.device)).all(dim=-1)
            if not bool(match.any(dim=1).all()):
                continue
            token = match.to(torch.int8).argmax(dim=1)  # the first matching token of each row
            rows = torch.arange(out.shape[0], device=out.device)
            chosen = x[rows, token]
            same = (x == chosen[:, None, :]).all(dim=-1) | ~match
            if not bool(same.all()):
                continue  # two tokens give the row's logits from different embeddings
            self.inputs, self.outputs = chosen, out[rows, token]
            self.problem = None
            self.rows[-1] = out.shape[0]
            return

    def _model_hook(self, module, args, kwargs, output):
        self.model_forwards += 1
        if self._finder is not None and self.error is None:
            self._finder.model_ran = True
            try:
                self._resolve(output)
            except Exception as exc:  # reported by observe(), never raised here
                self.error = (f"finding its head failed ({type(exc).__name__}: {exc}); pass "
                              "the layer that maps embeddings to logits as layer=")
        if self._tokens is not None and self._head_calls <= 1:
            try:
                self._pool(output)
            except Exception as exc:  # reported by observe(), never raised here
                self.problem = f"made its pooled rows fail ({type(exc).__name__}: {exc})"
            self._tokens = None
        if self._head_calls > 1 and self.outputs is not None and not any(
                _same_tensor(self.outputs, t) for t in _tensors(output)):
            # which call gave the returned logits cannot be told: the latest is kept
            # only when the model returns its output as it is
            self.problem = (f"ran {self._head_calls} times in one forward of "
                            f"{type(module).__name__}, and the model does not return the "
                            f"latest call's output, so which call gave its logits cannot be "
                            f"told")
            self.inputs = self.outputs = None
            if self.rows:
                self.rows[-1] = None
        self._head_calls = 0

    def _resolve(self, output):
        """Find the head from the latest forward (``output``: the model's, or None)."""
        head, error = self._finder.resolve(output)
        if head is None and error is None:
            if output is not None:  # not knowable from this forward (no autograd graph)
                self._finder.forget()
            return
        finder, self._finder = self._finder, None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if error is not None:
            self.error = error
            return
        self.layer = head
        self._handles = [head.register_forward_hook(self._hook, with_kwargs=True)]
        x, out = finder.seen[head]
        calls = len(finder.outputs[head])  # the head's calls in the finding forward
        self.rows = [None] * (calls - 1)
        self.modes = [(torch.is_grad_enabled(), head.training)] * calls
        self._record(x, out)
        self._head_calls = calls

    def take(self):
        """The latest (embeddings, logits), cleared so they are never used twice.

        Returns
        -------
        embeddings, logits : tensor or None
            Input and output of the hooked layer at the latest forward pass
            (None before any forward pass since the last call).
        """
        values = (self.inputs, self.outputs)
        self.inputs = self.outputs = None
        self.rows = []
        self.modes = []
        self.problem = None
        self.model_forwards = 0
        return values

    def remove(self):
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name in ("_model_handle", "_model_pre_handle"):
            handle = getattr(self, name)
            if handle is not None:
                handle.remove()
                setattr(self, name, None)

    def name(self, layer=None):
        """How messages name ``layer`` (the hooked one by default).

        Parameters
        ----------
        layer : torch.nn.Module, default=None
            The layer to name; None names the hooked layer.

        Returns
        -------
        name : str
            ``"'attribute.path' (ClassName)"``, or the class name alone.
        """
        layer = self.layer if layer is None else layer
        name = self._names.get(layer)
        kind = type(layer).__name__
        return f"'{name}' ({kind})" if name else kind


def check_watched(capture, n_rows):
    """The capture's latest (embeddings, logits) for a batch of ``n_rows``, or a named error.

    Raises
    ------
    ValueError
        If the head could not be found, the layer did not run since the last
        observation, its latest forward gave no usable values, or it had
        another number of rows than the batch.
    """
    finder = capture._finder
    if finder is not None and capture.error is None:
        if not finder.model_ran:  # the model's own forward never ran: read what its layers did
            capture._resolve(None)
        if capture._finder is not None and capture.error is None and finder.model_ran:
            capture.error = ("its output is not the output of one of its torch.nn.Linear "
                             "layers, and it carries no autograd graph (the forwards ran "
                             "under torch.no_grad(), or the model returns detached values), "
                             "so the layer that gives the logits cannot be told; pass it as "
                             "layer=")
    if capture.error is not None:
        raise ValueError(f"GraftBatchSampler.watch could not find the head of "
                         f"{type(capture.model).__name__}: {capture.error}.")
    if not capture.rows:
        raise ValueError(_no_forward_message(capture))
    if capture.problem is not None:
        raise ValueError(
            f"The layer {capture.name()} watched by GraftBatchSampler.watch "
            f"{capture.problem} at its latest forward; observe() needs a layer that maps "
            "(b, d) embeddings to (b, C) logits: pass that layer to watch() as layer=, or "
            "pass embeddings= and logits= to observe().")
    rows = capture.rows
    if rows[-1] != n_rows:
        raise ValueError(_rows_message(capture, rows, n_rows))
    return capture.inputs, capture.outputs


def mixed_modes_message(capture):
    """Why the latest forward is not the training batch's, or None: a forward with
    autograd in training mode ran since the last observation, and the latest did not
    (it ran under torch.no_grad() or in eval mode: an evaluation). A latest forward
    with autograd in training mode is taken for the training batch's, whatever ran
    before it (an attack or an evaluation in eval mode, a recomputed checkpoint)."""
    modes = capture.modes
    training = (True, True)  # autograd on, training mode
    if not modes or modes[-1] == training or training not in modes[:-1]:
        return None
    grad, train = modes[-1]
    latest = (f"{'with' if grad else 'without'} autograd in "
              f"{'training' if train else 'eval'} mode")
    return (
        f"The watched layer {capture.name()} ran {len(modes)} forward passes since the "
        f"last observe(): one with autograd in training mode, and the latest {latest} (an "
        f"evaluation), so it is not taken for the training batch's and nothing is "
        f"recorded. Call observe() right after the training batch's forward, before "
        f"other forwards of the model (under Lightning, list GraftCallback before "
        f"callbacks that run the model), or pass embeddings= and logits= to observe().")


def _no_forward_message(capture):
    if capture.layer is None:
        return (f"observe() found no forward pass of {type(capture.model).__name__} since the "
                "last observation, so watch() has not found its head yet; call observe() "
                "after the model's forward.")
    if capture.model_forwards:
        return (f"observe() found no forward pass of the watched layer {capture.name()} "
                f"since the last observation, though the model ran {capture.model_forwards} "
                "forward passes: the model's forward does not call this layer. Pass the "
                "layer that maps embeddings to logits to watch() as layer=.")
    return (f"observe() found no forward pass of the watched layer {capture.name()} since "
            "the last observation; call it after the model's forward (or watch() the layer "
            "that forward calls, with layer=).")


def _rows_message(capture, rows, n_rows):
    if len(rows) > 1 and None not in rows and sum(rows) == n_rows:
        return (f"The watched layer {capture.name()} ran {len(rows)} forward passes since the "
                f"last observe(), of {' + '.join(map(str, rows))} rows, which add up to the "
                f"batch's {n_rows}: the batch was forwarded in micro-batches, and the hook "
                f"keeps the last forward only ({rows[-1]} rows). Call observe(indices, "
                "embeddings=..., logits=...) after each micro-batch with its share of the "
                "batch's indices, or forward the batch whole.")
    return (f"The latest forward of the watched layer {capture.name()} had {rows[-1]} rows, "
            f"but the batch being observed has {n_rows} indices ({len(rows)} forward passes "
            "since the last observe()). Observe each batch after its own forward, or pass "
            "indices=, embeddings= and logits= to observe().")


def _problem(x, output):
    """Why a forward of a watched layer gives no (b, d) input and (b, C) output, or None."""
    if not isinstance(output, torch.Tensor):
        return f"returned a {type(output).__name__}, not a tensor"
    if not isinstance(x, torch.Tensor):
        return f"got a {type(x).__name__} as its input, not a tensor"
    if x.ndim != 2:
        return (f"got an input of shape {tuple(x.shape)}, not (b, d): observe() needs one "
                "row of embeddings per sample (a layer applied per token or per position "
                "gives several)")
    if output.ndim != 2 or output.shape[0] != x.shape[0]:
        return (f"mapped an input of shape {tuple(x.shape)} to an output of shape "
                f"{tuple(output.shape)}, not (b, C)")
    return None


def _per_token_problem(x, output):
    """Why a forward gives no (b, ..., d) input and (b, ..., C) output alike, or None."""
    if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
        return _problem(x, output)
    if x.ndim < 2 or x.ndim != output.ndim or x.shape[:-1] != output.shape[:-1]:
        return (f"mapped an input of shape {tuple(x.shape)} to an output of shape "
                f"{tuple(output.shape)}, not (b, ..., d) to (b, ..., C)")
    return None


class _HeadFinder:
    """Finds the head of a model from one forward: the Linear whose output it returns.

    Every ``torch.nn.Linear`` of the model is hooked until the head is found;
    its latest input and output (with their autograd graph) are kept for that
    one forward only.
    """

    def __init__(self, model, loss="cross_entropy"):
        self.model = model
        self.loss = loss
        self.names = {m: n for n, m in model.named_modules()}
        self.seen = {}  # layer -> (input, output) of its latest forward
        self.outputs = collections.defaultdict(list)  # layer -> outputs of all its calls
        self.model_ran = False

    def forget(self):
        """Drop what the layers did (a forward the head could not be found from)."""
        self.seen.clear()
        self.outputs.clear()

    def hooks(self):
        return [m.register_forward_hook(self._hook, with_kwargs=True)
                for m in self.model.modules() if isinstance(m, torch.nn.Linear)]

    def _hook(self, module, args, kwargs, output):
        self.seen[module] = (args[0] if args else next(iter(kwargs.values()), None), output)
        self.outputs[module].append(output)

    def resolve(self, output):
        """``(head, None)``, ``(None, why not)``, or ``(None, None)``: not knowable yet.

        ``output`` is the model's output, or None when its forward did not run
        (a submodule was called directly): the head is then the Linear that ran
        whose output no other Linear that ran reads.
        """
        if not self.seen:
            return None, None
        producers = {out.grad_fn: layer for layer, outs in self.outputs.items() for out in outs
                     if isinstance(out, torch.Tensor) and out.grad_fn is not None}
        if output is None:
            fed = set()
            for x, _ in self.seen.values():
                fed |= _upstream(_tensors(x), producers)
            found = [layer for layer in self.seen if layer not in fed]
            if not producers:
                return None, ("its forward never ran and its layers ran without autograd, so "
                              "the layer that gives the logits cannot be told; pass it as "
                              "layer=")
            return self._one(found, "its own forward never ran, and the layers called "
                                    "last are")
        outputs = _tensors(output)
        direct = [layer for layer, outs in self.outputs.items()
                  if any(out is t for out in outs for t in outputs)]
        if direct:
            return self._one(direct, "it returns the outputs of")
        if not any(t.grad_fn is not None for t in outputs):
            return None, None  # e.g. under torch.no_grad(): wait for a forward with a graph
        head, error = self._one(sorted(_upstream(outputs, producers), key=self._name),
                                "its output is computed from")
        if head is not None:
            error = self._not_logits(head, outputs, producers)
        return (None, error) if error is not None else (head, None)

    @torch.compiler.disable  # a hook inside a compiled forward: its walk runs eagerly
    def _not_logits(self, head, outputs, producers):
        """Why the model's output, computed from ``head``, is not that layer's logits
        (up to what ``self.loss`` allows, see `_same_logits`), or None.

        Only a (b, C) head output is compared: a per-token head (a (b, T, C)
        output the model pools) is reported by `_problem` at ``observe()``.
        """
        logits = self.seen[head][1]
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            return None
        derived = [t for t in outputs if t.grad_fn is not None
                   and head in _upstream([t], producers)]
        if any(_same_logits(t, logits, self.loss) for t in derived):
            return None
        allowed = ("that layer's output, its log_softmax or its softmax"
                   if self.loss == "cross_entropy" else "that layer's output")
        shapes = ", ".join(str(tuple(t.shape)) for t in derived)
        return (f"its output (shape {shapes}) is computed from '{self._name(head)}' "
                f"(a {type(head).__name__} with outputs of shape {tuple(logits.shape)}) but "
                f"is not {allowed}: a scale, temperature, mask or normalisation after "
                "that layer, or a head that is not a torch.nn.Linear, so the values observe() "
                "would record are not the model's logits; pass the layer whose output is "
                "the logits as layer=, or pass embeddings= and logits= to observe()")

    def _one(self, layers, how):
        if len(layers) == 1:
            return layers[0], None
        if not layers:
            return None, ("its output is computed from none of its torch.nn.Linear layers; "
                          "pass the layer that maps embeddings to logits as layer=")
        names = ", ".join(f"'{self._name(layer)}'" for layer in layers)
        return None, (f"{how} several torch.nn.Linear layers ({names}), so observe() "
                      "cannot tell which one gives the logits; pass it as layer=")

    def _name(self, layer):
        return self.names.get(layer) or type(layer).__name__


def _same_logits(output, logits, loss):
    """Whether the tensor ``output`` is ``logits`` (a (b, C) tensor) up to a reshape, a
    cast and, with ``loss="cross_entropy"``, a shift per row (``log_softmax``) or a
    ``softmax``: the values that give the same residuals.

    Compared in float32 (float64 if either is) to a tolerance of 64 roundings
    of the coarsest dtype involved times the logits' largest magnitude
    (``log_softmax`` subtracts a ``logsumexp`` that large), on the rows where
    both are finite (a diverged batch's NaN, a log-probability that overflowed
    to -inf say nothing); with no such row there is nothing to refute. A row of
    finite logits whose magnitudes stay under a quarter of the output dtype's
    largest value (no cast, shift or ``log_softmax`` of it can overflow) with a
    non-finite output entry refutes it: a mask (``masked_fill`` with -inf
    before the loss) changes the residuals, and every masked row would
    otherwise be set aside as non-finite.
    """
    if (not isinstance(output, torch.Tensor) or output.numel() != logits.numel()
            or not output.is_floating_point() or not logits.is_floating_point()):
        return False
    dtype = torch.float64 if torch.float64 in (output.dtype, logits.dtype) else torch.float32
    eps = max(torch.finfo(output.dtype).eps, torch.finfo(logits.dtype).eps)
    z = logits.detach().to(dtype)
    out = output.detach().reshape(logits.shape).to(device=z.device, dtype=dtype)
    bounded = torch.isfinite(z).all(dim=1) & (
        z.abs().amax(dim=1) < torch.finfo(output.dtype).max / 4)
    if bool((bounded & ~torch.isfinite(out).all(dim=1)).any()):
        return False  # an entry masked to +-inf or NaN after the layer
    finite = (torch.isfinite(z) & torch.isfinite(out)).all(dim=1)
    z, out = z[finite], out[finite]
    if not z.numel():
        return True
    tol = 64 * eps * (1.0 + float(z.abs().max()))
    difference = out - z
    if float(difference.abs().max()) <= tol:
        return True
    if loss != "cross_entropy":
        return False
    spread = difference.max(dim=1).values - difference.min(dim=1).values
    if float(spread.max()) <= tol:  # log_softmax, or any shift per row
        return True
    return float((out - torch.softmax(z, dim=1)).abs().max()) <= 64 * eps


def _same_tensor(kept, tensor):
    """Whether ``tensor`` is the tensor whose detached view ``kept`` is."""
    return (isinstance(tensor, torch.Tensor) and tensor.shape == kept.shape
            and tensor.device == kept.device and tensor.data_ptr() == kept.data_ptr())


def _tensors(value, depth=0):
    """The tensors in ``value``: itself, or the items of a tuple, list or mapping."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 2:
        return []
    if isinstance(value, collections.abc.Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item, depth + 1)]
    return []


def _upstream(roots, producers):
    """Layers whose outputs (autograd nodes ``producers``) ``roots`` are computed from.

    A walk of the autograd graph from ``roots`` that stops at each producer, so
    only the nearest ones count.
    """
    found, seen = set(), set()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        layer = producers.get(node)
        if layer is not None:
            found.add(layer)
            continue
        stack.extend(parent for parent, _ in node.next_functions)
    return found
