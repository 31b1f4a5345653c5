"""The training loop behind ``smakit train``: one script for a laptop CPU, a GPU, or torchrun.

AdamW with warm-up + cosine decay, gradient clipping and accumulation, bf16 autocast on GPU,
DDP under ``torchrun``, periodic evaluation, checkpoints that resume the same run, a progress
bar, ``metrics.jsonl`` and PNG plots.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import bits_per_byte
from ..data.base import IGNORE_INDEX
from ..routing.budget import accumulate_budgets
from ..routing.stats import collect_routing_stats, summarize_routing
from ..sma import aux_losses
from . import distributed as dist
from ._extra import require_train_extra
from .batching import StepBatchSampler
from .build import DATA_LOADING_KEYS, SPLITS, build_datasets, build_model, collate_fn
from .checkpoint import BEST, CHECKPOINT, load_checkpoint, save_checkpoint
from .config import Recipe
from .optim import TrainConfig, lr_lambda, make_optimizer
from .rundir import RunDir, atomic_write, dumps
from .stopping import TrainingDiverged, TrainingInterrupted, catch_sigint
from .validate import check_data_table, check_model_table, resolve_paths

try:
    from tqdm.auto import tqdm
except ImportError:  # the `train` extra is missing; Trainer.train says so
    tqdm = None


def autocast_for(device: torch.device, amp: str):
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def task_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> tuple[torch.Tensor, dict]:
    """Cross-entropy and the sums behind accuracy: ``{"correct", "count"}`` (LM: per token)."""
    if task == "lm":
        flat, y = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        loss = F.cross_entropy(flat.float(), y, ignore_index=IGNORE_INDEX)
        valid = y != IGNORE_INDEX
        correct = (flat.argmax(-1) == y)[valid].sum()
        return loss, {"correct": correct, "count": valid.sum()}
    loss = F.cross_entropy(logits.float(), targets)
    return loss, {"correct": (logits.argmax(-1) == targets).sum(), "count": torch.tensor(targets.numel())}


def activation_ratios(model: nn.Module) -> list[float]:
    """Per routed layer (in model order), the fraction of real tokens its modules ran on
    (fixed-pattern layers left out); one host sync."""
    return summarize_routing(collect_routing_stats(model, routed_only=True))["ratio"]


def prepare_recipe(recipe: Recipe) -> TrainConfig:
    """Validate ``recipe`` (types, ranges, unknown keys) and resolve its data paths in place."""
    recipe.data = resolve_paths(recipe.data)
    cfg = TrainConfig.from_dict(recipe.train)
    check_data_table(recipe.data, DATA_LOADING_KEYS)
    check_model_table(recipe.model)
    return cfg


def check_splits(data: dict, data_cfg: dict, splits=SPLITS) -> None:
    """A split without a single example is an error, not a loss of 0."""
    for split in splits:
        if len(data[split]) == 0:
            hint = ""
            if "seq_len" in data_cfg:
                hint = (f"; each window needs data.seq_len + 1 = {data_cfg['seq_len'] + 1} bytes of the split: "
                        "lower data.seq_len or give more text")
            raise ValueError(f"the {split} split of data {data_cfg.get('name')!r} has no examples{hint}")


class Trainer:
    """Runs one recipe into ``out_dir`` (resuming from its checkpoint when there is one).

    The recipe is checked (types, ranges, unknown keys) and the folder is checked (a smakit
    run of the same data and model, or new) before any data or model is built; nothing is
    written before :meth:`train`. ``out_dir=None`` gives a read-only trainer for evaluation.

    Args:
        recipe (Recipe): the resolved recipe.
        out_dir (str or Path, optional): run folder for ``metrics.jsonl``, checkpoints and plots.
        device (str, optional): default CUDA when available (the local rank under torchrun).
        progress (bool): show a progress bar. Default: ``True``.
    """

    def __init__(self, recipe: Recipe, out_dir, device: str | None = None, progress: bool = True):
        self.recipe = recipe
        self.cfg = prepare_recipe(recipe)
        self.run_dir = None if out_dir is None else RunDir(out_dir, recipe.as_dict())
        self.out = None if out_dir is None else self.run_dir.path
        self.ctx = dist.setup(device)
        try:
            self._build(recipe, progress)
        except BaseException:
            dist.teardown(self.ctx, clean=False)  # the group this trainer joined ends with it
            raise

    def _build(self, recipe: Recipe, progress: bool) -> None:
        """All but joining the group: folder check, data, model, optimiser, resume."""
        self.device = self.ctx.device
        self.progress = progress and self.ctx.is_main
        if self.run_dir is not None:  # rank 0 checks the folder; every rank stops if it refuses
            dist.check_on_main(self.run_dir.check, self.ctx)
        torch.manual_seed(self.cfg.seed)
        self.data = build_datasets(recipe.data)
        if self.run_dir is not None:
            check_splits(self.data, recipe.data)
        self.info = self.data["train"].info
        self.model = build_model(self.info, recipe.model).to(self.device)
        self.ddp_model = dist.wrap(self.model, self.ctx)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_lambda, cfg=self.cfg))
        self.step, self.saved_step, self.best = 0, None, None
        self.notes: list[str] = []  # what a resume changed, printed by train()
        if self.run_dir is not None and (self.out / CHECKPOINT).exists():
            self._resume(load_checkpoint(self.out / CHECKPOINT, map_location=self.device))

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        """What a checkpoint holds: weights, optimiser, schedule, step, best metric, recipe."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "best": self.best,
                "recipe": self.recipe.as_dict(), "info": self.info.__dict__}

    def save(self, best: bool = False) -> None:
        """``checkpoint.pt`` (and ``best.pt``, rank 0 writes), only from finite weights."""
        # checked on every rank (DDP keeps the weights identical), so all ranks stop together
        # instead of rank 0 alone leaving the others in their next collective
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingDiverged(self._diverged_text("the weights are not finite"))
        if self.ctx.is_main:
            state = self.state()
            save_checkpoint(state, self.out / CHECKPOINT)
            if best:
                save_checkpoint(state, self.out / BEST)
        self.saved_step = self.step

    def close(self, clean: bool = True) -> None:
        """Leave the process group this trainer started under ``torchrun`` (no-op otherwise);
        call it last, on every rank. ``clean=False`` after an error: no barrier first."""
        dist.teardown(self.ctx, clean)

    def load(self, path) -> None:
        """Load a checkpoint's weights, optimiser, schedule and step (same model config)."""
        self._resume(load_checkpoint(path, map_location=self.device))

    def load_weights(self, state: dict, path) -> None:
        """Load only the model weights of a checkpoint ``state`` read from ``path``."""
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise ValueError(f"{path} does not fit the model this recipe builds "
                             f"({' '.join(first[:2])[:300]})") from None

    def _resume(self, state: dict) -> None:
        self.load_weights(state, self.out / CHECKPOINT if self.out else "checkpoint")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = self.saved_step = state["step"]
        self.best = state.get("best")
        self._apply_changed_settings(state["recipe"]["train"])

    def _apply_changed_settings(self, old_table: dict) -> None:
        """Resume with the settings of this command: new optimiser values drive the schedule."""
        known = set(asdict(self.cfg))
        old, new = asdict(TrainConfig(**{k: v for k, v in old_table.items() if k in known})), asdict(self.cfg)
        changed = [k for k in new if list(_as_tuple(old[k])) != list(_as_tuple(new[k]))]
        if not changed:
            return
        cfg, groups = self.cfg, self.optimizer.param_groups
        self.scheduler.base_lrs = [cfg.lr] * len(groups)
        for g in groups:
            g["initial_lr"], g["betas"] = cfg.lr, tuple(cfg.betas)
            g["lr"] = cfg.lr * lr_lambda(self.step, cfg)
        groups[0]["weight_decay"] = cfg.weight_decay  # group 0 holds the decayed matrices
        self.scheduler._last_lr = [g["lr"] for g in groups]
        text = ", ".join(f"train.{k} {old[k]!r} -> {new[k]!r}" for k in changed)
        self.notes.append(f"resuming at step {self.step} with changed settings: {text}; applied from step "
                          f"{self.step} on (the learning rate now follows the new schedule)")

    # -- data --------------------------------------------------------------------------
    def _loader(self, split: str, sampler=None, shuffle=False) -> DataLoader:
        collate = collate_fn(self.info, self.recipe.data)
        if sampler is not None:
            return DataLoader(self.data[split], batch_sampler=sampler, collate_fn=collate,
                              num_workers=self.cfg.num_workers)
        ds = self.data[split]
        shard = torch.utils.data.Subset(ds, range(self.ctx.rank, len(ds), self.ctx.world_size))
        return DataLoader(shard, batch_size=self.cfg.batch_size, collate_fn=collate, shuffle=shuffle)

    def _to_device(self, batch):
        return [t.to(self.device, non_blocking=True) for t in batch]

    # -- steps -------------------------------------------------------------------------
    def forward(self, model, inputs, mask, targets, return_logits: bool = False):
        with autocast_for(self.device, self.cfg.amp):
            logits = model(inputs, mask=mask)
        loss, acc = task_loss(logits, targets, self.info.task)
        aux = aux_losses(self.model)
        total = loss if aux is None else loss + self.cfg.aux_weight * aux
        return (total, loss, acc, logits) if return_logits else (total, loss, acc)

    @torch.no_grad()
    def evaluate(self, split: str = "val", confusion: bool = False) -> dict:
        """Loss, accuracy (and bpc, activation) on ``split``; with ``confusion`` (classification),
        also the ``[C, C]`` confusion matrix of the same pass (row = true class) as lists."""
        check_splits(self.data, self.recipe.data, [split])
        confusion = confusion and self.info.task == "classification"
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        C = self.info.num_classes or 0
        counts = torch.zeros(C * C, dtype=torch.float64, device=self.device)
        ratios = []
        for i, batch in enumerate(self._loader(split)):
            if self.cfg.eval_batches and i >= self.cfg.eval_batches:
                break
            inputs, mask, targets = self._to_device(batch)
            _, loss, acc, logits = self.forward(self.model, inputs, mask, targets, return_logits=True)
            n = acc["count"].to(self.device, torch.float64)
            sums += torch.stack([loss.double() * n, acc["correct"].to(sums), n])
            if confusion:
                counts += torch.bincount(targets * C + logits.argmax(-1), minlength=C * C).to(counts)
            ratios.append(activation_ratios(self.model))
        sums = dist.all_reduce_sum(sums, self.ctx)
        if confusion:
            counts = dist.all_reduce_sum(counts, self.ctx)
        self.model.train()
        if sums[2].item() == 0:
            raise ValueError(f"the {split} split gave no targets to score")
        n = sums[2].item()
        out = {"split": split, "loss": sums[0].item() / n, "accuracy": sums[1].item() / n}
        if self.info.task == "lm":
            out["bpc"] = bits_per_byte(out["loss"])
        if ratios and ratios[0]:
            out["activation"] = [sum(col) / len(col) for col in zip(*ratios)]
        if confusion:
            out["confusion"] = counts.view(C, C).long().tolist()
        return out

    @contextmanager
    def claim(self):
        """Context holding the run folder (lock, manifest) on the main process; call on every
        rank: when rank 0 cannot claim it (another run holds the lock), every rank raises."""
        if self.run_dir is None:
            raise ValueError("this trainer has no run folder (out_dir=None): it can only evaluate")
        with ExitStack() as held:
            dist.check_on_main(lambda: held.enter_context(self.run_dir.claimed()), self.ctx)
            yield

    def train(self, until: int | None = None) -> dict:
        """Train to ``max_steps`` (or stop early at step ``until``, as an interruption would).

        Raises:
            TrainingDiverged: a non-finite loss, gradient or metric; the last good
                ``checkpoint.pt`` is kept.
            TrainingInterrupted: Ctrl-C; ``checkpoint.pt`` holds the last finished step.
        """
        require_train_extra("Trainer.train")
        with self.claim():
            if self.ctx.is_main:
                self._start_files()
            opened = open(self.out / "metrics.jsonl", "a") if self.ctx.is_main else nullcontext()
            with opened as log, catch_sigint() as stop:
                return self._train(until, log, stop)

    def _start_files(self) -> None:
        for note in self.notes:
            print(note, flush=True)
        with atomic_write(self.out / "config.json") as f:
            f.write(dumps(self.recipe.as_dict(), indent=2))
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop what was logged after the checkpoint we resume from
            lines = metrics.read_text().splitlines()
            keep = [line for line in lines if _step_of(line) is not None and _step_of(line) <= self.step]
            if len(keep) != len(lines):
                with atomic_write(metrics) as f:
                    f.write("".join(line + "\n" for line in keep))

    def _train(self, until, log, stop) -> dict:
        cfg = self.cfg
        last = cfg.max_steps if until is None else min(until, cfg.max_steps)
        sampler = StepBatchSampler(len(self.data["train"]), cfg.batch_size, cfg.seed, self.ctx.rank,
                                   self.ctx.world_size, start=self.step * cfg.grad_accum)
        batches = iter(self._loader("train", sampler=sampler))
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, desc=self.recipe.name,
                   dynamic_ncols=True)
        start, tokens, window_start = time.time(), 0, time.time()
        self.model.train()
        while self.step < last:
            if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                self._say(bar, f"time limit of {cfg.max_minutes} min reached at step {self.step}")
                break
            stats = self._optimizer_step(batches, log)
            tokens += stats.pop("tokens")
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                elapsed = time.time() - window_start
                stats.update(step=self.step, lr=self.scheduler.get_last_lr()[0], tokens_per_s=tokens / elapsed)
                tokens, window_start = 0, time.time()
                bar.set_postfix(self._postfix(stats))
                self._write(log, {"kind": "train", **stats})
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                self._evaluate_and_save(log, bar)
            if dist.any_rank([stop[0]], self.ctx)[0]:
                bar.close()
                if self.saved_step != self.step:
                    self.save()
                raise TrainingInterrupted(f"interrupted at step {self.step}: saved {self.out / CHECKPOINT}; "
                                          "run the same command again to resume")
        bar.close()
        if self.step % cfg.eval_every and self.step != cfg.max_steps:  # stopped early: close the curve
            self._evaluate_and_save(log, bar)
        elif self.saved_step != self.step:
            self.save()
        return {"steps": self.step, "minutes": (time.time() - start) / 60}

    def _evaluate_and_save(self, log, bar) -> None:
        metrics = self.evaluate("val")
        self._write(log, {"kind": "eval", "step": self.step, **metrics})
        self._say(bar, self._describe(metrics))
        if not math.isfinite(metrics["loss"]):
            raise TrainingDiverged(self._diverged_text(f"validation loss is {metrics['loss']}"))
        key, sign = ("loss", -1) if self.info.task == "lm" else ("accuracy", 1)
        better = self.best is None or sign * metrics[key] > sign * self.best["value"]
        if better:
            self.best = {"metric": f"val {key}", "value": metrics[key], "step": self.step}
        self.save(best=better)

    def _say(self, bar, text: str) -> None:
        if self.ctx.is_main:  # tqdm's write prints even with the bar disabled, on every rank
            bar.write(text)

    def _diverged_text(self, what: str) -> str:
        kept = (f"{self.out / CHECKPOINT} keeps step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint had been saved yet")
        return (f"training diverged at step {self.step}: {what}; stopped without saving ({kept}). "
                f"Try a lower --lr (now {self.cfg.lr}) or --grad-clip")

    def _optimizer_step(self, batches, log) -> dict:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "correct": 0, "count": 0, "tokens": 0}
        with accumulate_budgets(self.model):  # every micro-batch routed with the same budget bias
            for micro in range(cfg.grad_accum):
                inputs, mask, targets = self._to_device(next(batches))
                sync = micro == cfg.grad_accum - 1
                with dist.maybe_no_sync(self.ddp_model, sync):
                    total, loss, acc = self.forward(self.ddp_model, inputs, mask, targets)
                    (total / cfg.grad_accum).backward()
                totals["loss"] += loss.item() / cfg.grad_accum
                totals["correct"] += int(acc["correct"])
                totals["count"] += int(acc["count"])
                totals["tokens"] += int(mask.sum()) * self.ctx.world_size
        norm = math.nan
        if cfg.grad_clip:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        bad_loss, bad_norm = dist.any_rank([not math.isfinite(totals["loss"]),
                                            cfg.grad_clip > 0 and not math.isfinite(norm)], self.ctx)
        if bad_loss or bad_norm:
            self._write(log, {"kind": "diverged", "step": self.step + 1, "loss": totals["loss"]})
            what = f"loss {totals['loss']}" if bad_loss else f"gradient norm {norm}"
            self.step += 1
            raise TrainingDiverged(self._diverged_text(f"non-finite {what}"))
        self.optimizer.step()
        self.scheduler.step()
        out = {"loss": totals["loss"], "accuracy": totals["correct"] / max(totals["count"], 1),
               "tokens": totals["tokens"], "activation": activation_ratios(self.model)}
        if self.info.task == "lm":
            out["bpc"] = bits_per_byte(out["loss"])
        return out

    def _postfix(self, stats: dict) -> dict:
        post = {"loss": f"{stats['loss']:.3f}"}
        post["bpc" if "bpc" in stats else "acc"] = f"{stats.get('bpc', stats['accuracy']):.3f}"
        if stats.get("activation"):
            post["act"] = f"{sum(stats['activation']) / len(stats['activation']):.2f}"
        post["tok/s"] = f"{stats['tokens_per_s']:.0f}"
        return post

    def _describe(self, metrics: dict) -> str:
        text = f"step {self.step} {metrics['split']}: loss {metrics['loss']:.4f}"
        text += f", bpc {metrics['bpc']:.4f}" if "bpc" in metrics else f", accuracy {metrics['accuracy']:.4f}"
        if metrics.get("activation"):
            text += ", activation " + " ".join(f"{r:.2f}" for r in metrics["activation"])
        return text

    def _write(self, log, record: dict) -> None:
        if log:
            log.write(dumps(record) + "\n")  # strict JSON: NaN becomes null
            log.flush()


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
