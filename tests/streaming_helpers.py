"""Helpers for the step-by-step tests: run a layer token by token, compare decoding states."""

import torch


def stream(layer, x, state=None, **kw):
    """``layer.step`` over every token of ``x [B, L, D]`` from ``state`` (a fresh one by
    default) -> ``(outputs [B, L, D], final state)``."""
    state = layer.init_state(x.shape[0]) if state is None else state
    out = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state, **kw)
        out.append(y)
    return torch.stack(out, 1), state


def assert_same_state(a, b, path="state"):
    """Two decoding states (nested dicts, lists, tensors, ``None``) hold the same values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif a is None:
        assert b is None, path
    else:
        assert a.dtype == b.dtype and a.shape == b.shape, path
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=path)
