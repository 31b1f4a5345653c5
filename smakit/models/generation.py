"""Sampling from a language model: parallel prefill of the prompt, then one token at a time."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sma import SparseModularActivation
from ..streaming import check_left_padded, refuse_capacity_with_padding


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
    mask: Tensor | None = None,
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
        mask (Tensor, optional): ``[B, T]`` bool, True = real token: prompts of different
            lengths padded on the LEFT (each row's real tokens last, at least one). Each row
            continues as if generated alone (the stepping path passes ``mask`` to
            :meth:`~smakit.models.SequenceModel.prefill`; the re-run forward gets it too, and
            routing by a share of the padded length, top-k or a capacity budget, is refused).
            Default: ``None`` (all real).

    Returns:
        Tensor ``[B, T + max_new_tokens]`` int64: the prompt (padding included) and the new
        tokens.

    Examples::

        >>> model = SeqBoat(vocab_size=50, dim=32, depth=1, lm=True, window=4,
        ...                 qk_dim=16).eval()
        >>> generate(model, torch.zeros(2, 3, dtype=torch.long), 5).shape
        torch.Size([2, 8])
        >>> mask = torch.tensor([[True, True, True], [False, True, True]])  # lengths 3, 2
        >>> generate(model, torch.zeros(2, 3, dtype=torch.long), 5, mask=mask).shape
        torch.Size([2, 8])
    """
    _check_generate_args(model, prompt, max_new_tokens, temperature, top_k)
    stepping = getattr(model, "supports_step", False)
    if mask is not None:
        _check_generate_mask(model, prompt, mask, stepping)
    tokens = prompt
    if stepping:
        logits, state = model.prefill(prompt) if mask is None else model.prefill(prompt, mask)
        logits = logits[:, -1]
    for i in range(max_new_tokens):
        if not stepping:
            logits = (model(tokens) if mask is None else model(tokens, mask))[:, -1]
        nxt = _sample(logits, temperature, top_k, generator)
        tokens = torch.cat((tokens, nxt.unsqueeze(1)), dim=1)
        if mask is not None and not stepping:
            mask = F.pad(mask, (0, 1), value=True)  # the new token is real
        if stepping and i + 1 < max_new_tokens:
            logits, state = model.step(nxt, state)
    return tokens


def _check_generate_mask(model: nn.Module, prompt: Tensor, mask: Tensor, stepping: bool) -> None:
    check_left_padded(mask, prompt.shape)
    if not bool(mask[:, -1].all()):  # left padding: a row with a real token has its last one real
        raise ValueError("mask must mark at least one real token in every row (each row's last entry True)")
    if stepping:  # prefill checks the layers
        return
    for m in model.modules():  # the re-run forward: routing must not depend on the padded length
        if isinstance(m, SparseModularActivation):
            if not getattr(m.router, "causal", True):
                raise ValueError(f"mask cannot be used: {type(m.router).__name__} is not causal here (it routes a "
                                 "share of the whole padded row), so padding would change each row's routing")
            refuse_capacity_with_padding(m)


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(1)
