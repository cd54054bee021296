"""GraftTrainer in a real transformers.Trainer: tiny models built from configs, no download.

The two-process run is a real torchrun of tests/frameworks/transformers_run.py.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainingArguments,
)

from graft_select.sampler import GraftBatchSampler, LastLayerCapture  # noqa: E402
from graft_select.transformers import (  # noqa: E402
    CausalLMProxy,
    GraftTrainer,
    GraftTrainerMixin,
    graft_trainer,
)

N, LENGTH, VOCAB, BATCH = 120, 8, 30, 8
SCRIPTS = Path(__file__).parent / "frameworks"


class Logged(torch.utils.data.Dataset):
    """Synthetic sequences whose label is whether token 1 outnumbers token 2; logs reads."""

    def __init__(self, n=N, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 6, (n, LENGTH), generator=generator)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()
        self.log = []

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        self.log.append(int(i))
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def _sampler(data, cls=GraftBatchSampler, **kwargs):
    return cls(data, **{"batch_size": BATCH, "fraction": 0.3, "seed": 3,
                                      "warm_start_epochs": 1, "refit_every": 1, **kwargs})


def _args(tmp_path, **kwargs):
    return TrainingArguments(str(tmp_path), **{
        "per_device_train_batch_size": BATCH, "num_train_epochs": 3, "report_to": [],
        "use_cpu": True, "save_strategy": "no", "disable_tqdm": True, "seed": 0,
        "logging_strategy": "no", **kwargs})


def _trainer(tmp_path, data=None, sampler=None, cls=GraftTrainer, eval_data=None, **kwargs):
    data = Logged() if data is None else data
    sampler = _sampler(data) if sampler is None else sampler
    return cls(model=_bert(), args=_args(tmp_path, **kwargs), train_dataset=data,
               eval_dataset=eval_data, sampler=sampler)


def _planned(sampler, epochs, accumulation=1):
    """Optimizer steps per epoch, from the sampler's epoch lengths."""
    batches = [sampler.total_batches(e + 1) - sampler.total_batches(e) for e in range(epochs)]
    return [-(-b // accumulation) for b in batches]


class TestBookkeeping:
    @pytest.mark.parametrize("accumulation", [1, 2])
    def test_steps_planned_equal_steps_run(self, tmp_path, accumulation):
        """max_steps, the steps run, state.epoch and the schedule's end agree (warm start too)."""
        trainer = _trainer(tmp_path, gradient_accumulation_steps=accumulation)
        planned = _planned(trainer.sampler, 3, accumulation)
        output = trainer.train()
        assert trainer.epoch_batches == [15, 5, 5]
        assert output.global_step == trainer.state.max_steps == sum(planned)
        assert trainer.state.epoch == trainer.state.num_train_epochs == 3
        assert trainer.lr_scheduler.get_last_lr()[0] == 0.0

    def test_explicit_max_steps(self, tmp_path):
        """With max_steps, the run stops there, mid-epoch, with the schedule at 0."""
        trainer = _trainer(tmp_path, max_steps=18, gradient_accumulation_steps=2)
        output = trainer.train()
        # epochs of 8, 3, 3, 3, 3 steps (15, then 5 batches): step 18 is the 1st of epoch 4
        assert output.global_step == trainer.state.max_steps == 18
        assert trainer.state.num_train_epochs == 5
        assert trainer.state.epoch == pytest.approx(4 + 2 / 5)
        assert trainer.lr_scheduler.get_last_lr()[0] == 0.0

    def test_epoch_strategies(self, tmp_path):
        """Evaluation and saving by epochs happen once per (uneven) epoch."""
        data = Logged()
        trainer = _trainer(tmp_path, data=data, eval_data=Logged(16, seed=1),
                           eval_strategy="epoch", save_strategy="epoch")
        trainer.train()
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        assert [e["epoch"] for e in evals] == [1.0, 2.0, 3.0]
        steps = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
        assert steps == [15, 20, 25]


class HalfIgnored(Logged):
    """Every other label is -100 (an ignore_index): refits leave those samples out, so
    the selected epochs hold fewer batches than planned at the start (8, not 14)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, "labels": torch.tensor(-100) if i % 2 == 0 else item["labels"]}


def _shrinking(folder, resume=None, **kwargs):
    """A run whose selected epochs shrink; returns the trainer and its final weights."""
    data = HalfIgnored()
    trainer = _trainer(folder, data=data, sampler=_sampler(data, fraction=0.9), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)
    return trainer, [p.detach().clone() for p in trainer.model.parameters()]


class TestShrunkEpochs:
    def test_explicit_max_steps_is_reached(self, tmp_path):
        """With max_steps, epochs that a refit shrank ended the run early (step 31 of 43,
        the schedule short of 0, a warning naming step 43): epochs are now added until
        max_steps, and num_train_epochs counts them."""
        trainer, _ = _shrinking(tmp_path, max_steps=43)
        assert trainer.state.global_step == trainer.state.max_steps == 43
        assert trainer.epoch_batches == [15, 8, 8, 8, 8]
        assert trainer.state.num_train_epochs == 5
        assert trainer.lr_scheduler.get_last_lr()[0] == 0.0

    @pytest.mark.parametrize("kwargs", [{"max_steps": 43}, {"num_train_epochs": 3}])
    def test_resume_after_a_shrunk_epoch_is_exact(self, tmp_path, kwargs):
        """A resume after the epochs shrank planned its schedule from the shrunk epochs
        (31 steps where the saved run's schedule had 43) and, with max_steps, trained 12
        steps more than the saved run: it now gives the same steps and weights."""
        full, weights = _shrinking(tmp_path / "full", save_strategy="steps", save_steps=20,
                                   **kwargs)
        resumed, resumed_weights = _shrinking(tmp_path / "resumed",
                                              resume=str(tmp_path / "full" / "checkpoint-20"),
                                              **kwargs)
        assert resumed.state.global_step == full.state.global_step
        assert resumed.epoch_batches == full.epoch_batches
        assert all(torch.equal(a, b) for a, b in zip(weights, resumed_weights))


class TestFeedback:
    def test_every_micro_batch_observed_once(self, tmp_path, monkeypatch):
        """Each micro-batch is observed once, from the classifier, with the batch's labels."""
        trainer = _trainer(tmp_path, gradient_accumulation_steps=2)
        calls = []
        observe = trainer.sampler.observe
        monkeypatch.setattr(trainer.sampler, "observe",
                            lambda *a, **kw: calls.append(kw) or observe(*a, **kw))
        trainer.train()
        assert len(calls) == sum(trainer.epoch_batches)
        assert all(torch.equal(c["targets"].unique(), c["targets"].unique().clamp(0, 1))
                   for c in calls)
        state = trainer.sampler.state_dict()
        assert set(state["store"]) == {"embeddings", "residuals"}
        assert state["store"]["embeddings"].shape[1] == 16  # the classifier's input
        assert bool((state["last_seen"] >= 0).all())  # the warm-start epoch saw every sample
        assert trainer.sampler.last_refit.gradient_error is not None

    def test_evaluation_forwards_not_recorded(self, tmp_path):
        """Evaluating at every step records the same feedback as no evaluation (no dropout)."""
        stores = []
        for evaluate in (False, True):
            extra = {"eval_strategy": "steps", "eval_steps": 1} if evaluate else {}
            trainer = _trainer(tmp_path / str(evaluate), eval_data=Logged(12, seed=1), **extra)
            trainer.train()
            stores.append(trainer.sampler.state_dict()["store"])
        assert all(torch.equal(stores[0][k], stores[1][k]) for k in stores[0])

    def test_callback_evaluating_the_training_loader(self, tmp_path):
        """A callback that iterates the train_dataloader the Trainer hands it, in the
        middle of an epoch, replaced the running pass: the next micro-batches were
        recorded under the callback's batches (58 of 120 stored rows wrong). Now the
        store is the same as without the callback (no dropout)."""
        from transformers import TrainerCallback

        class Evaluate(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, train_dataloader=None,
                            **kwargs):
                if state.global_step == 3:
                    with torch.no_grad():
                        self.seen = sum(len(b["input_ids"]) for b in train_dataloader)

        stores = []
        for evaluate in (False, True):
            trainer = _trainer(tmp_path / str(evaluate))
            callback = Evaluate()
            if evaluate:
                trainer.add_callback(callback)
            trainer.train()
            stores.append(trainer.sampler.state_dict()["store"])
        assert callback.seen == N
        assert all(torch.equal(stores[0][k], stores[1][k]) for k in stores[0])

    def test_causal_lm(self, tmp_path):
        """A tiny GPT-2 trains with the sketched gradient proxy; planned steps run."""
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2,
                                           n_positions=16))
        data = [{"input_ids": ids, "labels": ids} for ids in Logged().ids]
        sampler = _sampler(data)
        trainer = GraftTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                               sampler=sampler, lm_proxy_width=32)
        output = trainer.train()
        assert output.global_step == trainer.state.max_steps == 25
        state = sampler.state_dict()
        # hidden 16 > sqrt(32): 6 vocabulary buckets x 5 Gaussian columns
        store = state["store"]
        assert set(store) == {"gradients"} and store["gradients"].shape == (N, 30)
        assert bool((state["last_seen"] >= 0).all())  # the warm-start epoch saw every sample
        assert sampler.last_refit.epoch_size == 36 and sampler.last_refit.n_selected == 72

    def test_masked_lm_raises(self, tmp_path):
        """A masked LM's head (its output embeddings, not causal) is refused by name."""
        torch.manual_seed(0)
        model = transformers.BertForMaskedLM(BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16))
        data = [{"input_ids": ids, "labels": ids} for ids in Logged().ids]
        trainer = GraftTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                               sampler=_sampler(data))
        with pytest.raises(ValueError, match=r"BertForMaskedLM is neither.*layer="):
            trainer.train()


    def test_token_classification_raises(self, tmp_path):
        """A per-token classifier (outputs (b, T, C)) is refused as a model kind GraftTrainer
        does not train, naming the head (the message suggested a layer= it cannot use)."""
        torch.manual_seed(0)
        model = transformers.BertForTokenClassification(BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16))
        data = [{"input_ids": ids, "labels": ids % 2} for ids in Logged().ids]
        trainer = GraftTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                               sampler=_sampler(data))
        with pytest.raises(ValueError, match=r"BertForTokenClassification is not one of these: "
                                             r"its head 'classifier'.*\(8, 8, 16\)"):
            trainer.train()

    @pytest.mark.parametrize("kind", ["multi-label", "multiple-choice"])
    def test_other_heads_are_refused_by_kind(self, tmp_path, kind):
        """Multi-label and multiple-choice models got observe()'s own advice (pass
        gradients=, or targets.argmax(1), which would train other labels): GraftTrainer
        now says it does not train that kind of model, and what to use instead."""
        torch.manual_seed(0)
        config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=16,
                            max_position_embeddings=16, num_labels=3)
        ids = Logged().ids
        if kind == "multi-label":
            config.problem_type = "multi_label_classification"
            model = BertForSequenceClassification(config)
            data = [{"input_ids": i, "labels": (i[:3] % 2).float()} for i in ids]
            match = r"labels have shape \(8, 3\), not \(b,\)"
        else:
            model = transformers.BertForMultipleChoice(config)
            data = [{"input_ids": torch.stack([i, i.flip(0)]), "labels": i[0] % 2} for i in ids]
            match = r"gave 16 rows for the micro-batch's 8 samples"
        trainer = GraftTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                               sampler=_sampler(data))
        with pytest.raises(ValueError, match=rf"{type(model).__name__} is not one of these: "
                                             rf".*{match}.*transformers.Trainer"):
            trainer.train()

    def test_decoder_sequence_classifier(self, tmp_path):
        """A decoder's sequence classifier applies its 'score' head to every token and
        returns the logits of each sequence's last token: it was refused (with a layer=
        fix it cannot use). Its samples are now recorded with that token's embeddings."""
        torch.manual_seed(0)
        model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16,
            pad_token_id=VOCAB - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        data = Logged()
        # a learning rate of 0: every recorded row is comparable with the final model's
        trainer = GraftTrainer(model=model, args=_args(tmp_path, num_train_epochs=1,
                                                       learning_rate=0.0),
                               train_dataset=data, sampler=_sampler(data))
        trainer.train()
        model.eval()
        with torch.no_grad():
            hidden = model.transformer(data.ids).last_hidden_state[:, -1]  # no padding
        stored = trainer.sampler.state_dict()["store"]["embeddings"]
        torch.testing.assert_close(stored, hidden, rtol=1e-4, atol=1e-5)


class TestPerTokenCapture:
    def test_keeps_per_token_values(self):
        """per_token=True keeps a (b, T, d) input and (b, T, V) output as they are."""
        head = torch.nn.Linear(4, 6)
        capture = LastLayerCapture(head, per_token=True)
        x = torch.randn(3, 5, 4)
        out = head(x)
        hidden, logits = capture.take()
        assert torch.equal(hidden, x) and torch.equal(logits, out.detach())
        assert capture.take() == (None, None)

    def test_refuses_mismatched_leading_shapes(self):
        """An output whose leading dimensions are not the input's is recorded as a problem."""
        layer = torch.nn.Flatten(1)
        capture = LastLayerCapture(layer, per_token=True)
        layer(torch.randn(3, 5, 4))
        assert capture.outputs is None and "(3, 5, 4)" in capture.problem


class TestCausalLMProxy:
    def test_gram_unbiased(self):
        """Averaged over seeds, the proxies' inner products approach the exact gradients'."""
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(3, 6, 5, generator=generator)
        logits = torch.randn(3, 6, 11, generator=generator)
        labels = torch.randint(0, 11, (3, 6), generator=generator)
        labels[0, 3] = -100
        mask = (labels[:, 1:] != -100).float()[..., None]
        residual = torch.softmax(logits[:, :-1], -1) - torch.nn.functional.one_hot(
            labels[:, 1:].clamp(min=0), 11)
        exact = torch.einsum("btv,btd->bvd", residual * mask, hidden[:, :-1]).flatten(1)
        gram = sum(_gram(CausalLMProxy(64, seed)(hidden, logits, labels))
                   for seed in range(1000)) / 1000
        target = (exact @ exact.T).double()
        assert torch.allclose(gram, target, rtol=0.0, atol=0.05 * float(target.diag().max()))


def _gram(features):
    features = features.double()
    return features @ features.T


class TestConstruction:
    def test_group_by_length_raises(self, tmp_path):
        """A length-grouped sampling strategy is refused at construction."""
        with pytest.raises(ValueError, match="group_by_length"):
            _trainer(tmp_path, train_sampling_strategy="group_by_length")

    def test_split_batches_raises(self, tmp_path):
        """split_batches=True split each batch across processes under the plain Trainer
        and was ignored here (twice the per-process batch, half the steps): refused."""
        with pytest.raises(ValueError, match=r"accelerator_config of GraftTrainer has "
                                             r"split_batches=True"):
            _trainer(tmp_path, accelerator_config={"split_batches": True})

    def test_iterable_dataset_raises(self, tmp_path):
        """An IterableDataset is refused at construction."""
        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                return iter([])

        with pytest.raises(TypeError, match="IterableDataset"):
            _trainer(tmp_path, data=Stream(), sampler=_sampler(N), max_steps=3)

    def test_batch_size_mismatch_raises(self, tmp_path):
        """per_device_train_batch_size must be the sampler's batch size."""
        with pytest.raises(ValueError, match="per_device_train_batch_size"):
            _trainer(tmp_path, per_device_train_batch_size=4)

    def test_sampler_required(self, tmp_path):
        """A missing sampler is a TypeError naming the parameter."""
        with pytest.raises(TypeError, match="'sampler' parameter"):
            GraftTrainer(model=_bert(), args=_args(tmp_path), train_dataset=Logged())

    def test_factory_for_existing_subclass(self, tmp_path):
        """graft_trainer(MyTrainer) keeps MyTrainer's behaviour and plans GRAFT's steps."""
        class MyTrainer(transformers.Trainer):
            def compute_loss(self, model, inputs, *args, **kwargs):
                self.calls = getattr(self, "calls", 0) + 1
                return super().compute_loss(model, inputs, *args, **kwargs)

        cls = graft_trainer(MyTrainer)
        assert issubclass(cls, GraftTrainerMixin) and graft_trainer(cls) is cls
        trainer = _trainer(tmp_path, cls=cls)
        assert trainer.train().global_step == 25 and trainer.calls == 25


class Recording(GraftBatchSampler):
    """A GraftBatchSampler that keeps each pass's batches (this rank's plan), by epoch."""

    def __iter__(self):
        iteration = super().__iter__()
        self.__dict__.setdefault("plans", {}).setdefault(self.epoch, []).append(
            torch.cat(self._iteration.batches).tolist())
        return iteration


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A run saving a checkpoint at every step: (folder, dataset read log, trainer)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    data = Logged()
    trainer = _trainer(folder, data=data, sampler=_sampler(data, cls=Recording),
                       save_strategy="steps", save_steps=1, gradient_accumulation_steps=2)
    trainer.train()
    return folder, data.log, trainer


class TestResume:
    # 3 epochs of 15, 5 and 5 batches of 8 (120, 36, 36 samples); 8, 3 and 3 steps of 2
    # batches; (checkpoint step, samples the uninterrupted run had read by then)
    @pytest.mark.parametrize("save_step, read", [
        (4, 64),  # mid warm-start epoch
        (8, 120),  # end of the warm-start epoch (its last step has one batch)
        (10, 152),  # mid selected epoch
        (11, 156),  # end of a selected epoch
        (13, 188),  # mid last epoch
    ])
    def test_resume_is_exact(self, tmp_path, uninterrupted, save_step, read):
        """Resuming at any step trains the same samples in the same order, to the same step."""
        folder, log, full = uninterrupted
        resumed_data = Logged()
        resumed = _trainer(tmp_path, data=resumed_data, gradient_accumulation_steps=2,
                           sampler=_sampler(resumed_data, cls=Recording))
        output = resumed.train(resume_from_checkpoint=str(folder / f"checkpoint-{save_step}"))
        assert len(log) == 192
        assert resumed_data.log == log[read:]
        assert resumed.epoch_batches == full.epoch_batches == [15, 5, 5]
        assert all(len(passes) == 1 for passes in full.sampler.plans.values())
        # one pass per epoch from the resumed one on, each with the uninterrupted run's plan
        first = min(resumed.sampler.plans)
        assert resumed.sampler.plans == {e: p for e, p in full.sampler.plans.items() if e >= first}
        assert output.global_step == full.state.global_step == resumed.state.max_steps == 14
        assert resumed.state.epoch == full.state.epoch == 3
        assert resumed.lr_scheduler.get_last_lr()[0] == 0.0
        for a, b in zip(full.model.parameters(), resumed.model.parameters()):
            assert torch.allclose(a, b, atol=1e-6)

    def test_other_batch_size_raises(self, tmp_path, uninterrupted):
        """A checkpoint of another batch size is refused: its position is another step."""
        data = Logged()
        trainer = _trainer(tmp_path, data=data, sampler=_sampler(data, batch_size=4),
                           per_device_train_batch_size=4, gradient_accumulation_steps=2)
        message = r"global step is 4.*batch 16 of epoch 0, which is step 8.*the batch size"
        with pytest.raises(ValueError, match=message):
            trainer.train(resume_from_checkpoint=str(uninterrupted[0] / "checkpoint-4"))

    def test_other_number_of_processes_raises(self, tmp_path, uninterrupted):
        """A checkpoint of 1 process resumed by a sampler sharded over 2 is refused by name."""
        data = Logged()
        trainer = _trainer(tmp_path, data=data, gradient_accumulation_steps=2,
                           sampler=_sampler(data, num_replicas=2, rank=0))
        with pytest.raises(ValueError, match=r"saved by 1 process\(es\).*this run has 2"):
            trainer.train(resume_from_checkpoint=str(uninterrupted[0] / "checkpoint-4"))

    def test_checkpoint_without_sampler_state_raises(self, tmp_path):
        """A checkpoint of a plain Trainer cannot resume a GraftTrainer."""
        (tmp_path / "checkpoint-3").mkdir()
        with pytest.raises(ValueError, match=r"graft_sampler_rank0\.pt"):
            _trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """2 gloo processes: disjoint equal shares of one plan, the same steps on both ranks."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPTS / "transformers_run.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == ranks[0]["max_steps"]
    assert ranks[0]["epoch_batches"] == ranks[1]["epoch_batches"]
    for epoch in range(3):
        a, b = (r["shards"][epoch] for r in ranks)
        plan = ranks[0]["plans"][epoch]
        assert plan == ranks[1]["plans"][epoch]
        assert len(a) == len(b) == -(-len(plan) // 2)
        assert set(a) | set(b) == set(plan)
        assert len(set(a) & set(b)) <= 1  # DistributedSampler's padding
    assert ranks[0]["gathered_bytes"] > 0
