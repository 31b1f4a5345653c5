"""Griffe extension: read torch.nn-style docstrings as Google-style Markdown.

smakit's docstrings follow ``torch/nn/modules/linear.py``: ``Args:``, ``Shape:``,
``Examples::`` and Sphinx roles such as ``:class:`Routing```. Before mkdocstrings parses
them, this extension

* turns ``Examples::`` into a Google ``Examples:`` section (doctest blocks render as code),
* turns ``:class:`X``` / ``:func:`X``` / ``:meth:`X``` / ``:attr:`X``` into Markdown
  cross-references, resolved in the scope of the documented object (``~`` shortens the
  label to the last name); names it cannot resolve become plain code,
* turns Sphinx double-backtick literals into single-backtick Markdown code,
* splits ``Args:`` lines that document several parameters at once
  (``q, k (Tensor): ...; v (Tensor): ...``) into one entry per parameter,
* links only to objects the API pages render (exported names and their documented
  members); other names stay plain code, so ``mkdocs build --strict`` does not fail on them.

The docstring text in the source is unchanged; only the rendered pages see this.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`(~?)([\w.]+)(\(\))?`")
DOUBLE_BACKTICK = re.compile(r"``(.+?)``")
EXAMPLES = re.compile(r"^(\s*)(Examples?|Example)::\s*$", re.MULTILINE)
SECTION = re.compile(r"^(\s*)(\w[\w ]*):\s*$")
ENTRY = re.compile(r"^(?P<names>\w+(?:\s*,\s*\w+)*)\s*(?P<type>\([^)]*\))?:\s+(?P<desc>.*)$")
NEXT_ENTRY = re.compile(r";\s+(?=\w+(?:\s*,\s*\w+)*\s*\([^)]*\):\s)")
PUBLIC_PACKAGES = ("smakit", "smakit.routing", "smakit.ops", "smakit.modules", "smakit.models", "smakit.data",
                   "smakit.integrations", "smakit.train")
HIDDEN_MEMBERS = {"extra_repr", "reset_parameters"}


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """Full path of ``name`` as seen from ``obj`` (or from its parents)."""
    scope = obj
    head, _, rest = name.partition(".")
    while scope is not None:
        try:
            path = scope.resolve(head)
        except Exception:  # noqa: BLE001 - griffe raises several kinds of lookup errors
            path = None
        if path:
            return _canonical(obj, f"{path}.{rest}" if rest else path)
        scope = scope.parent
    if name.startswith("smakit."):
        return _canonical(obj, name)
    return None


def _canonical(obj: griffe.Object, path: str) -> str:
    """Where ``path`` is defined, following re-exports (the anchor autorefs knows)."""
    try:
        target = obj.modules_collection.get_member(path)
        if target.is_alias:
            target = target.final_target
        if target.is_module and target.name in target.members:
            # `smakit.sma` names both a module and the function it defines; a role means the function
            target = target.members[target.name]
            target = target.final_target if target.is_alias else target
        return target.canonical_path
    except Exception:  # noqa: BLE001 - not loaded, or outside the package
        return path


def _split_args(text: str) -> str:
    """One ``name (type): description`` entry per parameter in ``Args:`` sections."""
    out, in_args, entry_indent = [], False, None
    for line in text.splitlines():
        m = SECTION.match(line)
        if m:
            in_args, entry_indent = m.group(2) in ("Args", "Arguments", "Parameters"), None
            out.append(line)
            continue
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if in_args and stripped:
            if entry_indent is None:
                entry_indent = indent
            if indent == entry_indent:
                pieces = NEXT_ENTRY.split(stripped)
                entries = [ENTRY.match(piece) for piece in pieces]
                if all(entries) and (len(pieces) > 1 or "," in entries[0].group("names")):
                    for e in entries:
                        for name in re.split(r"\s*,\s*", e.group("names")):
                            out.append(f"{indent}{name} {e.group('type') or ''}: {e.group('desc')}".replace(" :", ":"))
                    continue
            elif len(indent) < len(entry_indent):
                in_args = False
        out.append(line)
    return "\n".join(out)


def _rewrite(obj: griffe.Object, text: str, documented: set[str]) -> str:
    text = _split_args(text)
    text = EXAMPLES.sub(r"\1\2:", text)
    text = DOUBLE_BACKTICK.sub(r"`\1`", text)

    def role(match: re.Match) -> str:
        short, name, call = match.group(1), match.group(2), match.group(3) or ""
        label = (name.rsplit(".", 1)[-1] if short else name) + call
        path = _resolve(obj, name)
        if path is None or path not in documented:
            return f"`{label}`"
        return f"[`{label}`][{path}]"

    return ROLE.sub(role, text)


def _documented(pkg: griffe.Module) -> set[str]:
    """Canonical paths the API pages render: exported names and their documented public members."""
    paths: set[str] = set()
    for name in PUBLIC_PACKAGES:
        try:
            module = pkg.modules_collection.get_member(name)
        except Exception:  # noqa: BLE001 - package not there (yet)
            continue
        paths.add(module.canonical_path)
        for export in module.exports or []:
            try:
                target = module[export]
                target = target.final_target if target.is_alias else target
                if target.is_module and target.name in target.members:  # `smakit.sma`: the function
                    target = target.members[target.name]
                    target = target.final_target if target.is_alias else target
                if target.is_module:  # rendered only through its members
                    continue
            except Exception:  # noqa: BLE001 - unresolvable export
                continue
            if target.docstring is None:
                continue  # not rendered (show_if_no_docstring is off)
            paths.add(target.canonical_path)
            for member_name, member in target.members.items():
                if member_name.startswith("_") or member_name in HIDDEN_MEMBERS or member.is_alias:
                    continue
                if member.docstring is not None:
                    paths.add(member.canonical_path)
    return paths


class TorchDocstrings(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        documented = _documented(pkg)
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value, documented)
            for member in obj.members.values():
                if not member.is_alias:
                    stack.append(member)
