"""The ``[train]`` table of a recipe, and the AdamW optimiser and schedule it configures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .validate import check_train_table


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
        """Checked: unknown keys, types and ranges are one-line ``ValueError`` errors."""
        return check_train_table(cls, table)


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
