"""GraftTrainer measurements: the causal-LM proxy's Gram, and GRAFT against full data.

usage: python benchmarks/bench_transformers.py proxy
       python benchmarks/bench_transformers.py train [--seeds 0 1 2]

proxy: a tiny GPT-2 built from a config (vocabulary 500, hidden 32, 2 layers,
untrained) on 64 sequences of 32 tokens (random, or from 4 topics); the Pearson
correlation between the Gram matrix of CausalLMProxy features and that of the exact
per-sample last-layer gradients (vocabulary x hidden each), over all entries and over
the off-diagonal ones, next to a dense Gaussian sketch of the exact gradients of the
same width (which needs the gradients, as the proxy does not).

train: a synthetic sequence-classification task, a 2-layer BERT built from a config.
GRAFT at fraction 0.3 through GraftTrainer (1 warm-start epoch) against full data
stopped at the same number of steps, its linear schedule fitted to those steps
(max_steps). Test accuracy on held-out sequences with clean labels, per seed.
``--task parity`` is issue 24's task (4,000 sequences of 24 tokens over a 20-token
vocabulary; label: whether token 1 outnumbers token 2; 6 epochs), on which both arms
saturate. ``--task noisy`` (the default) is harder: 4 classes (which of tokens 1-4
occurs most, ties to the lowest), 8-token vocabulary, 20% of the training labels
replaced by another class at random, and 4 epochs (1 warm start + 3 selected), a step
budget below convergence. Each seed also runs a control, GraftTrainer with subsets of
GRAFT's sizes whose picks are 95% uniform (``GraftSelector(uniform_share=0.95)``), and
reports the share of wrongly labelled samples in GRAFT's last subset (a uniform subset
holds the task's noise rate).
"""

import argparse
import math
import statistics
import tempfile
import time

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from graft_select import GraftSelector
from graft_select.sampler import GraftBatchSampler
from graft_select.transformers import CausalLMProxy, GraftTrainer

TASKS = {
    "parity": {"n_train": 4000, "n_test": 2000, "length": 24, "vocab": 20, "batch": 32,
               "epochs": 6, "fraction": 0.3, "lr": 1e-3, "classes": 2, "noise": 0.0},
    "noisy": {"n_train": 4000, "n_test": 1000, "length": 24, "vocab": 8, "batch": 32,
              "epochs": 4, "fraction": 0.3, "lr": 1e-3, "classes": 4, "noise": 0.2},
}
TASK = dict(TASKS["noisy"])  # the task being run (set by main)


# ------------------------------------------------------------------------ proxy


def proxy_correlation(widths=(64, 256, 512, 1024), n=64, length=32, vocab=500, seed=0):
    """Gram correlations of the proxy, and of a dense Gaussian sketch of the same width.

    Rows ``(data, width, proxy all, proxy off-diagonal, dense all, dense off-diagonal)``
    for random tokens and for 4 "topics" (each sequence drawn from one of 4 disjoint
    sets of 20 tokens, so that gradients of a topic correlate).
    """
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2,
                                       n_positions=length, bos_token_id=0,
                                       eos_token_id=0)).eval()
    captured = {}
    model.lm_head.register_forward_hook(
        lambda m, i, o: captured.update(hidden=i[0].detach(), logits=o.detach()))
    topic = torch.arange(n) % 4
    data = {"random": torch.randint(0, vocab, (n, length)),
            "topics": topic[:, None] * 20 + torch.randint(0, 20, (n, length))}
    off = ~torch.eye(n, dtype=torch.bool)
    rows = []
    for name, ids in data.items():
        with torch.no_grad():
            model(input_ids=ids)
        hidden, logits = captured["hidden"], captured["logits"]
        residual = (torch.softmax(logits[:, :-1], -1)
                    - torch.nn.functional.one_hot(ids[:, 1:], vocab))
        exact = torch.einsum("btv,btd->bvd", residual, hidden[:, :-1]).flatten(1).double()
        target = exact @ exact.T
        for width in widths:
            features = CausalLMProxy(width, seed)(hidden, logits, ids).double()
            gram = features @ features.T
            generator = torch.Generator().manual_seed(seed + 1)
            dense = exact @ (torch.randn(exact.shape[1], width, dtype=torch.float64,
                                         generator=generator) / math.sqrt(width))
            reference = dense @ dense.T
            rows.append((name, width, _pearson(gram.flatten(), target.flatten()),
                         _pearson(gram[off], target[off]),
                         _pearson(reference.flatten(), target.flatten()),
                         _pearson(reference[off], target[off])))
    return rows


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


# ------------------------------------------------------------------------ train


class Sequences(torch.utils.data.Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def task(seed):
    """(train, test, wrong): datasets, and which training labels were flipped."""
    generator = torch.Generator().manual_seed(1000 + seed)
    total = TASK["n_train"] + TASK["n_test"]
    ids = torch.randint(0, TASK["vocab"], (total, TASK["length"]), generator=generator)
    if TASK["classes"] == 2:
        labels = ((ids == 1).sum(1) > (ids == 2).sum(1)).long()
    else:  # which of tokens 1..classes occurs most (argmax takes the first of ties)
        counts = torch.stack([(ids == t).sum(1) for t in range(1, TASK["classes"] + 1)], 1)
        labels = counts.argmax(1)
    cut = TASK["n_train"]
    train_labels = labels[:cut].clone()
    wrong = torch.rand(cut, generator=generator) < TASK["noise"]
    shift = torch.randint(1, max(2, TASK["classes"]), (cut,), generator=generator)
    train_labels[wrong] = (train_labels[wrong] + shift[wrong]) % TASK["classes"]
    return Sequences(ids[:cut], train_labels), Sequences(ids[cut:], labels[cut:]), wrong


def model(seed):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=TASK["vocab"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=TASK["length"],
        num_labels=TASK["classes"]))


def arguments(seed, **kwargs):
    return TrainingArguments(tempfile.mkdtemp(), per_device_train_batch_size=TASK["batch"],
                             learning_rate=TASK["lr"], report_to=[], use_cpu=True,
                             save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             seed=seed, data_seed=seed, **kwargs)


def accuracy(trainer, test):
    logits = trainer.predict(test).predictions
    return float((torch.as_tensor(logits).argmax(1) == test.labels).float().mean())


def graft_run(seed, train, selector=None):
    """(trainer, sampler, seconds) of a GraftTrainer run of TASK's epochs."""
    sampler = GraftBatchSampler(train, batch_size=TASK["batch"], fraction=TASK["fraction"],
                                warm_start_epochs=1, seed=seed, selector=selector)
    start = time.perf_counter()
    trainer = GraftTrainer(model=model(seed),
                           args=arguments(seed, num_train_epochs=TASK["epochs"]),
                           train_dataset=train, sampler=sampler)
    trainer.train()
    return trainer, sampler, time.perf_counter() - start


def run(seed):
    train, test, wrong = task(seed)
    graft, sampler, graft_seconds = graft_run(seed, train)
    steps = graft.state.global_step
    # control: subsets of the same sizes, 95% of each chunk's picks drawn uniformly
    uniform, _, _ = graft_run(seed, train, GraftSelector(basis="gradients",
                                                        uniform_share=0.95))
    start = time.perf_counter()
    full = Trainer(model=model(seed), args=arguments(seed, max_steps=steps), train_dataset=train)
    full.train()
    full_seconds = time.perf_counter() - start
    subset = sampler.state_dict()["subset"]
    return {"seed": seed, "steps": steps, "graft": accuracy(graft, test),
            "full": accuracy(full, test), "uniform": accuracy(uniform, test),
            "uniform_steps": uniform.state.global_step, "graft_s": graft_seconds,
            "full_s": full_seconds,
            "full_epochs": steps * TASK["batch"] / TASK["n_train"],
            "subset_wrong": float(wrong[subset].float().mean()),
            "excluded": sampler.last_refit.n_excluded}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["proxy", "train"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", choices=sorted(TASKS), default="noisy")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--epochs", type=int, default=None, help="GRAFT's epochs (default: "
                        "the task's)")
    options = parser.parse_args()
    TASK.update(TASKS[options.task])
    if options.epochs is not None:
        TASK["epochs"] = options.epochs
    torch.set_num_threads(options.threads)
    if options.what == "proxy":
        for name, width, every, off, dense, dense_off in proxy_correlation():
            print(f"{name:7s} width {width:5d}: Gram correlation {every:.3f} (off-diagonal "
                  f"{off:.3f}); dense Gaussian sketch {dense:.3f} ({dense_off:.3f})")
        return
    rows = [run(seed) for seed in options.seeds]
    for row in rows:
        print(f"seed {row['seed']}: {row['steps']} steps; GRAFT {row['graft']:.4f} "
              f"({row['graft_s']:.0f} s), full data at the same steps {row['full']:.4f} "
              f"({row['full_epochs']:.2f} epochs, {row['full_s']:.0f} s); near-uniform "
              f"subsets {row['uniform']:.4f} ({row['uniform_steps']} steps); GRAFT's last "
              f"subset: {row['subset_wrong']:.3f} wrong labels, {row['excluded']} excluded "
              "by the guard")
    for key in ("graft", "full", "uniform"):
        values = [row[key] for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else math.nan
        print(f"{key}: {statistics.mean(values):.4f} +- {spread:.4f}")


if __name__ == "__main__":
    main()
