"""The training loop behind ``smakit train``: one script for a laptop CPU, a GPU, or torchrun.

AdamW with warm-up + cosine decay, gradient clipping and accumulation, bf16 autocast on GPU,
DDP under ``torchrun``, periodic evaluation, checkpoints that resume the same run, a progress
bar, ``metrics.jsonl`` and PNG plots.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..sma import SparseModularActivation, aux_losses
from . import distributed as dist
from ._extra import require_train_extra
from .batching import StepBatchSampler
from .build import build_datasets, build_model, collate_fn
from .config import Recipe

try:
    from tqdm.auto import tqdm
except ImportError:  # the `train` extra is missing; Trainer.train says so
    tqdm = None

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """The ``[train]`` table of a recipe.

    Args:
        batch_size (int): micro-batch size per process. Default: 32.
        grad_accum (int): micro-batches per optimizer step. Default: 1.
        lr (float): peak learning rate. Default: 1e-3.
        min_lr_ratio (float): final learning rate as a fraction of ``lr``. Default: 0.1.
        warmup_steps (int): linear warm-up steps. Default: 100.
        max_steps (int): optimizer steps. Default: 1000.
        weight_decay (float): AdamW decay of matrices (not of norms and biases). Default: 0.01.
        betas (list[float]): AdamW betas. Default: ``[0.9, 0.98]``.
        grad_clip (float): max gradient norm, 0 to disable. Default: 1.0.
        aux_weight (float): weight of the routers' auxiliary (density) losses. Default: 1.0.
        eval_every (int): steps between evaluations (and checkpoints). Default: 200.
        eval_batches (int): batches per evaluation, 0 for the whole split. Default: 0.
        log_every (int): steps between ``metrics.jsonl`` lines. Default: 10.
        amp (str): ``"auto"`` (bf16 on CUDA), ``"bf16"``, ``"fp16"`` or ``"none"``. Default: ``"auto"``.
        seed (int): seed of the model and the data order. Default: 0.
        num_workers (int): DataLoader workers. Default: 0.
        max_minutes (float): stop training after this many minutes (0 = no limit). Default: 0.
    """

    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 1000
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.98)
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    eval_every: int = 200
    eval_batches: int = 0
    log_every: int = 10
    amp: str = "auto"
    seed: int = 0
    num_workers: int = 0
    max_minutes: float = 0.0

    @classmethod
    def from_dict(cls, table: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"unknown [train] keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**table)


def lr_lambda(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


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
        loss = F.cross_entropy(flat.float(), y, ignore_index=-100)
        valid = y != -100
        correct = (flat.argmax(-1) == y)[valid].sum()
        return loss, {"correct": correct, "count": valid.sum()}
    loss = F.cross_entropy(logits.float(), targets)
    return loss, {"correct": (logits.argmax(-1) == targets).sum(), "count": torch.tensor(targets.numel())}


def activation_ratios(model: nn.Module) -> list[float]:
    """Per routed layer (in model order), the fraction of real tokens its modules ran on."""
    layers = [m for m in model.modules() if isinstance(m, SparseModularActivation) and m.stats is not None]
    return [float(m.stats.ratio.sum()) for m in layers]


class Trainer:
    """Runs one recipe into ``out_dir`` (resuming from its checkpoint when there is one).

    Args:
        recipe (Recipe): the resolved recipe.
        out_dir (str or Path): run folder for ``metrics.jsonl``, checkpoints and plots.
        device (str, optional): default CUDA when available (the local rank under torchrun).
        progress (bool): show a progress bar. Default: ``True``.
    """

    def __init__(self, recipe: Recipe, out_dir, device: str | None = None, progress: bool = True):
        self.recipe, self.out = recipe, Path(out_dir)
        self.cfg = TrainConfig.from_dict(recipe.train)
        self.ctx = dist.setup(device)
        self.device = self.ctx.device
        self.progress = progress and self.ctx.is_main
        torch.manual_seed(self.cfg.seed)
        self.data = build_datasets(recipe.data)
        self.info = self.data["train"].info
        self.model = build_model(self.info, recipe.model).to(self.device)
        self.ddp_model = dist.wrap(self.model, self.ctx)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_lambda, cfg=self.cfg))
        self.step = 0
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(recipe.as_dict(), indent=2, default=str))
        if (self.out / CHECKPOINT).exists():
            self.load(self.out / CHECKPOINT)

    # -- checkpoints -------------------------------------------------------------------
    def save(self, path: Path | None = None) -> None:
        if not self.ctx.is_main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step,
                 "recipe": self.recipe.as_dict(), "info": self.info.__dict__}
        path = path or self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]

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
    def forward(self, model, inputs, mask, targets):
        with autocast_for(self.device, self.cfg.amp):
            logits = model(inputs, mask=mask)
        loss, acc = task_loss(logits, targets, self.info.task)
        aux = aux_losses(self.model)
        total = loss if aux is None else loss + self.cfg.aux_weight * aux
        return total, loss, acc

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        ratios = []
        for i, batch in enumerate(self._loader(split)):
            if self.cfg.eval_batches and i >= self.cfg.eval_batches:
                break
            inputs, mask, targets = self._to_device(batch)
            _, loss, acc = self.forward(self.model, inputs, mask, targets)
            n = acc["count"].to(self.device, torch.float64)
            sums += torch.stack([loss.double() * n, acc["correct"].to(sums), n])
            ratios.append(activation_ratios(self.model))
        sums = dist.all_reduce_sum(sums, self.ctx)
        self.model.train()
        n = max(sums[2].item(), 1.0)
        out = {"split": split, "loss": sums[0].item() / n, "accuracy": sums[1].item() / n}
        if self.info.task == "lm":
            out["bpc"] = out["loss"] / math.log(2)
        if ratios and ratios[0]:
            out["activation"] = [sum(col) / len(col) for col in zip(*ratios)]
        return out

    def train(self, until: int | None = None) -> dict:
        """Train to ``max_steps`` (or stop early at step ``until``, as an interruption would)."""
        require_train_extra("Trainer.train")
        cfg = self.cfg
        last = cfg.max_steps if until is None else min(until, cfg.max_steps)
        sampler = StepBatchSampler(len(self.data["train"]), cfg.batch_size, cfg.seed, self.ctx.rank,
                                   self.ctx.world_size, start=self.step * cfg.grad_accum)
        batches = iter(self._loader("train", sampler=sampler))
        log = open(self.out / "metrics.jsonl", "a") if self.ctx.is_main else None
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, desc=self.recipe.name,
                   dynamic_ncols=True)
        start, tokens, window_start = time.time(), 0, time.time()
        self.model.train()
        while self.step < last:
            if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                bar.write(f"time limit of {cfg.max_minutes} min reached at step {self.step}")
                break
            stats = self._optimizer_step(batches)
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
                metrics = self.evaluate("val")
                self._write(log, {"kind": "eval", "step": self.step, **metrics})
                bar.write(self._describe(metrics))
                self.save()
        bar.close()
        if self.step % cfg.eval_every and self.step != cfg.max_steps:  # stopped early: close the curve
            metrics = self.evaluate("val")
            self._write(log, {"kind": "eval", "step": self.step, **metrics})
            bar.write(self._describe(metrics))
        self.save()
        if log:
            log.close()
        return {"steps": self.step, "minutes": (time.time() - start) / 60}

    def _optimizer_step(self, batches) -> dict:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "correct": 0, "count": 0, "tokens": 0}
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
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        out = {"loss": totals["loss"], "accuracy": totals["correct"] / max(totals["count"], 1),
               "tokens": totals["tokens"], "activation": activation_ratios(self.model)}
        if self.info.task == "lm":
            out["bpc"] = out["loss"] / math.log(2)
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
            log.write(json.dumps(record) + "\n")
            log.flush()
