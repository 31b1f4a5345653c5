"""Compaction operators: :func:`compress` routed tokens in order, :func:`extract` outputs back."""

from .compaction import Compacted, build_index, compact_like, compress, extract

__all__ = ["Compacted", "build_index", "compact_like", "compress", "extract"]
