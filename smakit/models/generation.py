"""Sampling from a language model: parallel prefill of the prompt, then one token at a time."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_generate_args(model: nn.Module, prompt: Tensor, max_new_tokens: int, temperature: float,
                         top_k: int | None) -> None:
    if not getattr(model, "lm", False):
        raise ValueError("generate() needs a model with lm=True")
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.dtype != torch.long:
        shape = f"{tuple(prompt.shape)} {prompt.dtype}" if isinstance(prompt, Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be int64 token ids of shape [B, T], got {shape}")
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must hold at least one token per row (shape [B >= 1, T >= 1]), got {tuple(prompt.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample a continuation of ``prompt [B, T]`` from a language model.

    When the model decodes (``supports_step``), the prompt is read in one parallel
    :meth:`~smakit.models.SequenceModel.prefill` and each new token costs one ``O(1)``
    :meth:`~smakit.models.SequenceModel.step`; otherwise the full forward re-runs on the growing
    sequence.

    Args:
        model (nn.Module): a language model (``lm=True``) such as :class:`~smakit.models.SeqBoat`.
        prompt (Tensor): ``[B, T]`` int64 token ids, ``T >= 1``.
        max_new_tokens (int): tokens to add.
        temperature (float): ``0`` is greedy; ``> 0`` samples from ``softmax(logits / temperature)``.
            Default: 1.0.
        top_k (int, optional): sample among the ``top_k`` most likely tokens. Default: ``None``.
        generator (torch.Generator, optional): random numbers for sampling.

    Returns:
        Tensor ``[B, T + max_new_tokens]`` int64.

    Examples::

        >>> model = SeqBoat(vocab_size=50, dim=32, depth=1, lm=True, window=4,
        ...                 qk_dim=16).eval()
        >>> generate(model, torch.zeros(2, 3, dtype=torch.long), 5).shape
        torch.Size([2, 8])
    """
    _check_generate_args(model, prompt, max_new_tokens, temperature, top_k)
    tokens = prompt
    stepping = getattr(model, "supports_step", False)
    if stepping:
        logits, state = model.prefill(prompt)
        logits = logits[:, -1]
    for i in range(max_new_tokens):
        if not stepping:
            logits = model(tokens)[:, -1]
        nxt = _sample(logits, temperature, top_k, generator)
        tokens = torch.cat((tokens, nxt.unsqueeze(1)), dim=1)
        if stepping and i + 1 < max_new_tokens:
            logits, state = model.step(nxt, state)
    return tokens


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(1)
