"""Checks of a saved GraftBatchSampler state before anything of it is loaded.

:func:`check_state` checks a whole ``state_dict()`` (keys, types, sizes against the
sampler's dataset) and returns cleaned CPU copies, so a bad state leaves the sampler
unchanged; :func:`check_feedback` checks the recorded feedback alone (a torchdata
iterator snapshot holds only that).

This module imports torch; only the sampler's parts import it.
"""

import math
import numbers

import torch

from ._checks import LOSSES, check_indices
from ._store import FEEDBACK_NAMES

__all__ = ["check_feedback", "check_loss", "check_order", "check_sketch", "check_state"]

STATE_KEYS = {"epoch", "batches_yielded", "subset", "subset_epoch", "store", "last_seen",
              "rejected", "selection_seconds", "refit_epochs", "next_refit", "batch_size",
              "num_replicas", "sample_offset", "plan_offset", "sketch_width", "seed", "sketched",
              "background", "pending_refit", "loss", "refit_seconds", "trained_seconds",
              "rank", "unmerged_rows", "subset_refreshed", "pool_factor", "shuffle",
              "fraction", "warm_start_epochs", "pass_done"}
# absent from states saved before they were added
OPTIONAL_KEYS = {"rejected", "refit_epochs", "next_refit", "batch_size", "num_replicas",
                 "sample_offset", "plan_offset", "sketch_width", "seed", "sketched",
                 "background", "pending_refit", "loss", "refit_seconds", "trained_seconds",
                 "rank", "unmerged_rows", "subset_refreshed", "pool_factor", "shuffle",
                 "fraction", "warm_start_epochs", "pass_done"}
#: The parameters that order an epoch's batches, as a state records them (None: absent).
ORDER_KEYS = ("seed", "shuffle", "fraction", "warm_start_epochs")
PENDING_KEYS = {"epoch", "snapshot_epoch", "refreshed", "chosen", "error", "budget", "seconds",
                "report"}


def check_state(state, n_samples):
    """Validate a whole state dict of GraftBatchSampler; return cleaned copies."""
    owner = "GraftBatchSampler.load_state_dict"
    if not isinstance(state, dict):
        raise TypeError(f"{owner} expects the dict returned by state_dict(). Got "
                        f"{type(state).__name__} instead.")
    if not STATE_KEYS - OPTIONAL_KEYS <= set(state) <= STATE_KEYS:
        missing = sorted(STATE_KEYS - OPTIONAL_KEYS - set(state))
        extra = sorted(set(state) - STATE_KEYS)
        raise ValueError(f"{owner} got a state with missing keys {missing} and unknown keys "
                         f"{extra}; pass the dict returned by GraftBatchSampler.state_dict().")
    epoch = _state_int(state["epoch"], "epoch", owner)
    batches = _state_int(state["batches_yielded"], "batches_yielded", owner)
    subset_epoch = state["subset_epoch"]
    if subset_epoch is not None:
        subset_epoch = _state_int(subset_epoch, "subset_epoch", owner)
    subset = state["subset"]
    if subset is not None:
        subset = _index_tensor(subset, "subset", owner, n_samples)
        if len(subset) == 0 or len(torch.unique(subset)) != len(subset):
            raise ValueError(f"The 'subset' of the state passed to {owner} must hold distinct "
                             "dataset indices.")
    if (subset is None) != (subset_epoch is None):
        raise ValueError(f"The state passed to {owner} must have both 'subset' and "
                         "'subset_epoch' or neither.")
    # a state saved before pools trained its whole subset: all of it counts as refreshes,
    # which every epoch trains, until the next refit
    refreshed = state.get("subset_refreshed", None if subset is None else len(subset))
    refreshed = _state_int(0 if refreshed is None else refreshed, "subset_refreshed", owner)
    if refreshed > (0 if subset is None else len(subset)):
        raise ValueError(f"The 'subset_refreshed' of the state passed to {owner} counts the "
                         f"refreshed samples at the front of 'subset', so it is at most its "
                         f"length. Got {refreshed} for a subset of "
                         f"{0 if subset is None else len(subset)}.")
    seconds = _state_seconds(state["selection_seconds"], "selection_seconds", owner)
    feedback = check_feedback({key: state[key] for key in ("store", "last_seen", "rejected")
                               if key in state}, n_samples, owner)
    pool_factor = state.get("pool_factor")
    if pool_factor is not None and (isinstance(pool_factor, bool) or not isinstance(
            pool_factor, numbers.Real) or not 1.0 <= pool_factor < math.inf):
        raise ValueError(f"The 'pool_factor' of the state passed to {owner} must be a float "
                         f">= 1. Got {pool_factor!r} instead.")
    return {"epoch": epoch, "batches_yielded": batches, "subset": subset,
            "subset_epoch": subset_epoch, "subset_refreshed": refreshed,
            "pool_factor": None if pool_factor is None else float(pool_factor),
            "order": _check_order_keys(state, owner),
            "selection_seconds": float(seconds),
            **_check_schedule(state, owner), **_check_position(state, owner),
            **_check_sketch_keys(state, owner), **_check_background(state, owner, n_samples),
            "loss": _check_loss_key(state, owner), **feedback}


def _check_order_keys(state, owner):
    """The recorded parameters that order an epoch (`ORDER_KEYS`; None where absent)."""
    order = {key: state.get(key) for key in ORDER_KEYS}
    checks = {"seed": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
              "shuffle": lambda v: isinstance(v, bool),
              "fraction": lambda v: (isinstance(v, numbers.Real) and not isinstance(v, bool)
                                     and 0 < v <= 1),
              "warm_start_epochs": lambda v: (isinstance(v, numbers.Integral)
                                              and not isinstance(v, bool) and v >= 0)}
    for key, value in order.items():
        if value is not None and not checks[key](value):
            raise ValueError(f"The {key!r} of the state passed to {owner} is not one a "
                             f"GraftBatchSampler has: got {value!r}.")
    return order


def check_order(checked, parameters):
    """Raise if ``checked`` (a checked state) was saved in the middle of an epoch by a
    sampler whose ``parameters`` (a dict over `ORDER_KEYS`) ordered the epoch otherwise:
    the rest of the epoch would be cut from another order, training some samples twice
    and skipping others. A state saved between epochs (before the pass, or once the
    pass handed out and the loop consumed all its batches) loads under any of them."""
    if checked["pass_done"] or not (checked["batches_yielded"] or checked["sample_offset"]):
        return
    saved = checked["order"]
    other = [key for key in ORDER_KEYS
             if saved[key] is not None and saved[key] != parameters[key]]
    warm = saved["warm_start_epochs"]
    if warm is not None and checked["epoch"] < min(warm, parameters["warm_start_epochs"]):
        # a warm-start epoch under both: all the data, in an order of the seed and shuffle
        other = [key for key in other if key in ("seed", "shuffle")]
    if other:
        got = ", ".join(f"{key}={saved[key]!r}" for key in other)
        has = ", ".join(f"{key}={parameters[key]!r}" for key in other)
        raise ValueError(
            f"The state passed to GraftBatchSampler.load_state_dict was saved in the "
            f"middle of epoch {checked['epoch']} by a sampler with {got}, but this sampler "
            f"has {has}: the rest of the epoch would come from another order of the "
            f"samples, training some twice and skipping others. Build the sampler with "
            f"{got} to resume, or load a state saved between epochs.")


def _check_loss_key(state, owner):
    """The loss the state's residuals were recorded under (states saved before it was
    recorded could only hold cross-entropy residuals)."""
    loss = state.get("loss", "cross_entropy")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"The 'loss' of the state passed to {owner} must be one of "
                         f"{list(LOSSES)}. Got {loss!r} instead.")
    return loss


def check_loss(checked, loss):
    """Raise if ``checked`` (a checked state) was recorded under another ``loss``: its
    residuals would be read as another loss's (a softmax as errors, or errors as a softmax)."""
    if checked["loss"] != loss:
        raise ValueError(
            f"The state passed to GraftBatchSampler.load_state_dict was recorded with "
            f"loss={checked['loss']!r}, but this sampler has loss={loss!r}: its residuals "
            f"are of another loss. Build the sampler with loss={checked['loss']!r}.")


def _check_background(state, owner, n_samples):
    """The saved run's background decision (None: undecided) and the result of a
    background refit it had not collected yet (None: none)."""
    background = state.get("background")
    if background is not None and not isinstance(background, bool):
        raise ValueError(f"The 'background' of the state passed to {owner} must be True, "
                         f"False or None. Got {background!r} instead.")
    pending = state.get("pending_refit")
    if pending is None:
        return {"background": background, "pending_refit": None}
    if not isinstance(pending, dict) or set(pending) != PENDING_KEYS:
        got = sorted(pending) if isinstance(pending, dict) else type(pending).__name__
        raise ValueError(f"The 'pending_refit' of the state passed to {owner} must be None or "
                         f"a dict with keys {sorted(PENDING_KEYS)}. Got {got} instead.")
    checked = {name: _state_int(pending[name], f"pending_refit.{name}", owner)
               for name in ("epoch", "snapshot_epoch", "budget")}
    for name in ("refreshed", "chosen"):
        value = pending[name]
        checked[name] = (value.detach().cpu().clone() if torch.is_tensor(value) and len(value) == 0
                         and value.dtype == torch.int64
                         else _index_tensor(value, f"pending_refit.{name}", owner, n_samples))
    error, seconds = pending["error"], pending["seconds"]
    if error is not None and (isinstance(error, bool) or not isinstance(error, numbers.Real)):
        raise ValueError(f"The 'pending_refit.error' of the state passed to {owner} must be a "
                         f"float or None. Got {error!r} instead.")
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or seconds < 0:
        raise ValueError(f"The 'pending_refit.seconds' of the state passed to {owner} must be "
                         f"a float >= 0. Got {seconds!r} instead.")
    if not isinstance(pending["report"], dict):
        raise ValueError(f"The 'pending_refit.report' of the state passed to {owner} must be "
                         f"a dict. Got {type(pending['report']).__name__} instead.")
    checked.update(error=None if error is None else float(error), seconds=float(seconds),
                   report=dict(pending["report"]))
    return {"background": background, "pending_refit": checked}


def _check_position(state, owner):
    """What the state's position counts in: batch size and ranks (None: this sampler's),
    and the offsets of a pass that itself resumed under other ones (0 otherwise)."""
    checked = {}
    for name, low in (("batch_size", 1), ("num_replicas", 1)):
        value = state.get(name)
        checked[name] = None if value is None else _state_int(value, name, owner, low=low)
    for name in ("sample_offset", "plan_offset", "rank", "unmerged_rows"):
        checked[name] = _state_int(state.get(name, 0), name, owner)
    done = state.get("pass_done", False)
    if not isinstance(done, bool):
        raise ValueError(f"The 'pass_done' of the state passed to {owner} must be a bool. Got "
                         f"{done!r} instead.")
    checked["pass_done"] = done
    if checked["num_replicas"] is not None and checked["rank"] >= checked["num_replicas"]:
        raise ValueError(f"The 'rank' of the state passed to {owner} must be below its "
                         f"'num_replicas' ({checked['num_replicas']}). Got {checked['rank']} "
                         "instead.")
    return checked


def _check_sketch_keys(state, owner):
    """The sketch behind the state's feedback: width, seed and sketched entries (None:
    a state saved before they were recorded)."""
    width, seed = state.get("sketch_width"), state.get("seed")
    sketched = state.get("sketched", [])
    if not isinstance(sketched, (list, tuple)) or not set(sketched) <= set(FEEDBACK_NAMES):
        raise ValueError(f"The 'sketched' of the state passed to {owner} must be a list of "
                         f"some of {list(FEEDBACK_NAMES)}. Got {sketched!r} instead.")
    return {"sketch_width": None if width is None else _state_int(width, "sketch_width", owner,
                                                                   low=1),
            "seed": None if seed is None else _state_int(seed, "seed", owner),
            "sketched": list(sketched)}


def check_sketch(checked, *, sketch_width, seed):
    """Raise if ``checked`` (a checked state) holds feedback that a sampler with these
    ``sketch_width`` and ``seed`` would store differently: a sketch of another width or
    seed (its columns would mix two projections), or unsketched rows it would sketch."""
    owner = "GraftBatchSampler.load_state_dict"
    for name, rows in checked["store"].items():
        width = rows.shape[1]
        if name in checked["sketched"]:
            saved_width, saved_seed = checked["sketch_width"], checked["seed"]
            if saved_width is not None and saved_width != sketch_width:
                raise ValueError(
                    f"The state passed to {owner} holds {name!r} sketched to "
                    f"sketch_width={saved_width}, but this sampler has sketch_width="
                    f"{sketch_width}: new rows would be stored differently. Build the "
                    f"sampler with sketch_width={saved_width}.")
            if saved_seed is not None and saved_seed != seed:
                raise ValueError(
                    f"The state passed to {owner} holds {name!r} sketched with seed="
                    f"{saved_seed}, but this sampler has seed={seed}: the sketch comes from "
                    f"the seed, so new rows would mix another projection with the loaded ones. "
                    f"Build the sampler with seed={saved_seed}.")
        elif sketch_width is not None and width > sketch_width:
            raise ValueError(
                f"The state passed to {owner} holds {name!r} unsketched ({width} columns), "
                f"but this sampler has sketch_width={sketch_width} and would sketch new rows: "
                f"the two would not mix. Build the sampler with sketch_width=None or at "
                f"least {width}.")


def _check_schedule(state, owner):
    """The refit schedule's decisions of a state: refit epochs and the next one (or None)."""
    if ("refit_epochs" in state) != ("next_refit" in state):
        raise ValueError(f"The state passed to {owner} must have both 'refit_epochs' and "
                         "'next_refit' or neither.")
    if "next_refit" not in state:
        return {"refit_epochs": [], "next_refit": None}
    epochs = state["refit_epochs"]
    if not isinstance(epochs, (list, tuple)):
        raise TypeError(f"The 'refit_epochs' of the state passed to {owner} must be a list "
                        f"of epochs. Got {type(epochs).__name__} instead.")
    epochs = [_state_int(e, "refit_epochs", owner) for e in epochs]
    if epochs != sorted(set(epochs)):
        raise ValueError(f"The 'refit_epochs' of the state passed to {owner} must be "
                         f"increasing. Got {epochs} instead.")
    # the seconds the overhead budget counts (absent from states saved before it
    # was kept over the whole run: 0)
    budget = {name: _state_seconds(state.get(name, 0.0), name, owner)
              for name in ("refit_seconds", "trained_seconds")}
    return {"refit_epochs": epochs, "next_refit": _state_int(state["next_refit"],
                                                             "next_refit", owner), **budget}


def _state_seconds(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"The '{name}' of the state passed to {owner} must be a finite "
                         f"float >= 0. Got {value!r} instead.")
    return float(value)


def check_feedback(feedback, n_samples, owner):
    """Validate ``{"store": ..., "last_seen": ..., "rejected": ...}``; return CPU copies.

    ``rejected`` (optional; zeros when absent) counts per sample the observed rows
    rejected since the last refit, plus one last entry for rows whose index lay
    outside the dataset.
    """
    store = feedback.get("store") if isinstance(feedback, dict) else None
    if not isinstance(store, dict):
        raise TypeError(f"The 'store' of the state passed to {owner} must be a dict of "
                        f"tensors. Got {type(store).__name__} instead.")
    unknown = sorted(set(store) - set(FEEDBACK_NAMES))
    if unknown:
        raise ValueError(f"The 'store' of the state passed to {owner} has unknown entries "
                         f"{unknown}; expected some of {list(FEEDBACK_NAMES)}.")
    copies = {}
    for name, value in store.items():
        if not torch.is_tensor(value) or value.ndim != 2 or value.shape[0] != n_samples or (
                not value.dtype.is_floating_point):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"The store entry '{name}' of the state passed to {owner} must be "
                             f"a floating tensor of shape ({n_samples}, n_columns). Got "
                             f"{shape} instead; was the state saved by a sampler of another "
                             "dataset?")
        copies[name] = value.detach().cpu().clone()
    last_seen = feedback["last_seen"]
    if not torch.is_tensor(last_seen) or last_seen.shape != (n_samples,) or (
            last_seen.dtype != torch.int64):
        shape = tuple(last_seen.shape) if torch.is_tensor(last_seen) else type(last_seen).__name__
        raise ValueError(f"The 'last_seen' of the state passed to {owner} must be an int64 "
                         f"tensor of shape ({n_samples},). Got {shape} instead; was the state "
                         "saved by a sampler of another dataset?")
    rejected = feedback.get("rejected")
    if rejected is None:
        rejected = torch.zeros(n_samples + 1, dtype=torch.int32)
    elif not torch.is_tensor(rejected) or rejected.shape != (n_samples + 1,) or (
            rejected.dtype != torch.int32) or bool((rejected < 0).any()):
        shape = tuple(rejected.shape) if torch.is_tensor(rejected) else type(rejected).__name__
        raise ValueError(f"The 'rejected' of the state passed to {owner} must be an int32 "
                         f"tensor of shape ({n_samples + 1},) of counts >= 0. Got {shape} "
                         "instead; was the state saved by a sampler of another dataset?")
    return {"store": copies, "last_seen": last_seen.detach().cpu().clone(),
            "rejected": rejected.detach().cpu().clone()}


def _state_int(value, name, owner, low=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"The '{name}' of the state passed to {owner} must be an int >= "
                         f"{low}. Got {value!r} instead.")
    return int(value)


def _index_tensor(value, name, owner, n_samples):
    if not torch.is_tensor(value) or value.ndim != 1 or value.dtype != torch.int64:
        raise ValueError(f"The '{name}' of the state passed to {owner} must be a 1-D int64 "
                         f"tensor of dataset indices.")
    value = value.detach().cpu().clone()
    return check_indices(value, n_samples, subject=f"The '{name}' of the state passed to {owner}",
                         hint="was the state saved by a sampler of another dataset?")
