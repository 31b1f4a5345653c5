"""The documentation is tested like code.

* every ```python block of every page under ``docs/`` runs: a page's blocks run in order
  in one namespace, so a page reads (and is checked) as a tutorial; test ids are the pages;
  a block that prints is followed by a ```text block showing what it prints (checked, with
  ``...`` for parts that vary), after a ``torch.manual_seed`` on the page;
* code lines fit the 1280-pixel page: in the pages, the files they include, the docstring
  examples, and (in the built site) the API signatures and the generated CLI reference;
* every ``Examples::`` doctest of a public name (what the API pages show) runs;
* every public name is on an API page;
* the shell commands the pages show are real: ``smakit`` commands parse with the CLI's own
  parser (recipes exist, overrides apply), scripts and extras exist;
* ``mkdocs build --strict`` passes (when the ``docs`` extra is installed).

Blocks that must not run (shell commands, output) use another language tag (```bash,
```text). A line ``<!-- docs-test: requires PACKAGE -->`` in a page marks the blocks after it
as needing an optional package; without it the test stops there and is reported as skipped.
``--8<-- "path"`` lines inside a python block are replaced by that file, as the docs build
does, so included files are tested where they are shown.
"""

from __future__ import annotations

import contextlib
import doctest
import html
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")
REQUIRES = re.compile(r"^<!-- docs-test: requires ([\w.]+) -->\s*$")
SNIPPET = re.compile(r"""^[ \t]*--8<--[ \t]+["']([^"']+)["'][ \t]*$""")
RUNNABLE = {"python"}
MISTAKES = {"py", "python3", "pycon", "ipython", "pytorch"}  # would silently not run
PUBLIC_PACKAGES = ["smakit", "smakit.routing", "smakit.ops", "smakit.modules", "smakit.models", "smakit.data",
                   "smakit.integrations", "smakit.train"]


def fenced_blocks(text: str) -> list[dict]:
    """Each fenced block: ``lang``, ``first`` (line of its first code line), ``code``
    (dedented to its fence) and ``adjacent`` (only blank lines since the previous block)."""
    lines = text.splitlines()
    blocks, i, last_end = [], 0, -10
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        lang = m.group("info").strip().split(" ")[0].strip("{}.").lower()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            line = lines[j]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            j += 1
        adjacent = last_end >= 0 and all(not line.strip() for line in lines[last_end + 1:i])
        blocks.append({"lang": lang, "first": i + 2, "code": "\n".join(body), "adjacent": adjacent})
        last_end, i = j, j + 1
    return blocks


def code_blocks(text: str):
    """``(language, first_line, code)`` for each fenced block; code dedented to its fence."""
    for block in fenced_blocks(text):
        yield block["lang"], block["first"], block["code"]


def expand_snippets(code: str, under: str = "") -> str:
    """Replace ``--8<-- "path"`` lines by the file (only files under ``under``, if given)."""
    out = []
    for line in code.splitlines():
        m = SNIPPET.match(line)
        if m and m.group(1).startswith(under):
            line = (ROOT / m.group(1)).read_text().rstrip("\n")
        out.append(line)
    return "\n".join(out)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def page_id(path: Path) -> str:
    return path.relative_to(DOCS).with_suffix("").as_posix()


def runnable_pages() -> list[Path]:
    return [p for p in pages() if any(lang in RUNNABLE for lang, _, _ in code_blocks(p.read_text()))]


# Pages other work owns this session, not yet showing the output of their printing examples:
# their other blocks still run and any output block they have is compared. Remove when done.
OUTPUT_PENDING = {"concepts/budget", "how-to/streaming"}
OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
SEED = re.compile(r"manual_seed\(|[\"']?(train\.)?seed[\"']?\s*[:=]")  # torch's, or a recipe's seed


def _check_output(page: Path, blocks: list[dict], k: int, printed: str, seeded: bool) -> None:
    """A block that printed is followed by a ```text block equal to what it printed."""
    block = blocks[k]
    after = blocks[k + 1] if k + 1 < len(blocks) else None
    shown = after if after and after["adjacent"] and after["lang"] == "text" else None
    where = f"{page_id(page)}:{block['first'] - 1}"
    if not printed:
        return
    if shown is None:
        if page_id(page) in OUTPUT_PENDING:
            return
        pytest.fail(f"{where}: this block prints; show it in a ```text block right after it:\n{printed}")
    assert seeded, f"{where}: set a seed (torch.manual_seed) on the page before the first block that prints"
    if not doctest.OutputChecker().check_output(shown["code"].rstrip() + "\n", printed, OUTPUT_FLAGS):
        pytest.fail(f"{where}: the output block (line {shown['first']}) shows\n{shown['code']}\n"
                    f"but the block printed\n{printed}")


@pytest.mark.parametrize("page", runnable_pages(), ids=page_id)
def test_page_code_runs(page: Path, tmp_path, monkeypatch):
    """Run the page's python blocks in order in one namespace (tracebacks point at the .md
    lines); what a block prints must equal the ```text block that follows it."""
    monkeypatch.chdir(tmp_path)  # pages that write files write them here
    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny examples: extra threads only wait on a busy CI box
    text = page.read_text()
    requires = [(n + 1, m.group(1)) for n, line in enumerate(text.splitlines()) if (m := REQUIRES.match(line))]
    blocks = fenced_blocks(text)
    ran, seeded = 0, False
    try:
        for k, block in enumerate(blocks):
            if block["lang"] not in RUNNABLE:
                continue
            for line, package in requires:
                if line < block["first"] and importlib.util.find_spec(package) is None:
                    pytest.skip(f"{ran} blocks ran; the rest (from line {line}) needs {package}")
            code = expand_snippets(block["code"])
            seeded = seeded or SEED.search(code) is not None
            source = "\n" * (block["first"] - 1) + code
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(source, str(page), "exec"), namespace)  # noqa: S102 - the point of this test
            _check_output(page, blocks, k, out.getvalue(), seeded)
            ran += 1
    finally:
        torch.set_num_threads(threads)


def test_no_unrunnable_python_fences():
    """Python code is tagged ```python (which runs); other tags would skip the check silently."""
    bad = [f"{page_id(p)}:{line - 1} ```{lang}" for p in pages() for lang, line, _ in code_blocks(p.read_text())
           if lang in MISTAKES]
    assert not bad, "tag Python blocks ```python so tests/test_docs.py runs them: " + ", ".join(bad)


SHELL = {"bash", "sh", "shell", "console"}


def shell_commands():
    """``(page_id, line, tokens)`` for each command of each shell block (continuations joined)."""
    for page in pages():
        for lang, first, code in code_blocks(page.read_text()):
            if lang not in SHELL:
                continue
            joined = code.replace("\\\n", " ").splitlines()
            for i, line in enumerate(joined):
                if "$" in line or "<" in line:  # variables and placeholders: shown, not checkable
                    continue
                for command in re.split(r"&&|;", line):
                    tokens = shlex.split(command, comments=True)
                    if tokens:
                        yield page_id(page), first + i, tokens


def check_smakit_command(args: list[str]) -> None:
    from smakit.cli import build_parser
    from smakit.train import list_recipes, load_recipe, parse_overrides

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed, extra = build_parser().parse_known_args(args)
    except SystemExit as exit_:
        if exit_.code == 0:  # --version, --help
            return
        raise ValueError(stderr.getvalue().strip().splitlines()[-1]) from None
    if parsed.command == "train":
        assert parsed.recipe in list_recipes(), f"no recipe {parsed.recipe!r}"
        load_recipe(parsed.recipe, parsed.preset, parse_overrides(extra))
    else:
        assert not extra, f"unknown arguments {extra}"


def check_command(tokens: list[str]) -> None:
    program, args = tokens[0], tokens[1:]
    if program == "smakit":
        check_smakit_command(args)
    elif program == "torchrun":
        if "-m" in args:
            module = args[args.index("-m") + 1]
            assert module == "smakit.cli", f"torchrun -m {module}"
            check_smakit_command(args[args.index("-m") + 2:])
        else:
            script = next(a for a in args if a.endswith(".py"))
            assert (ROOT / script).is_file(), f"no script {script}"
    elif program == "python" and args and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), f"no script {args[0]}"
    elif program == "pip" and args[:1] == ["install"]:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for arg in args:
            for extra in re.findall(r"^\.\[([\w,]+)\]$", arg):
                for name in extra.split(","):
                    assert name in extras, f"no extra [{name}] in pyproject.toml"


def test_shell_commands_are_real():
    """Commands in ```bash blocks are not run (they train for minutes), but they must exist."""
    errors = []
    for page, line, tokens in shell_commands():
        try:
            check_command(tokens)
        except (AssertionError, ValueError, KeyError, StopIteration) as err:
            errors.append(f"{page}:{line} `{' '.join(tokens)}`: {err}")
    assert not errors, "\n".join(errors)


# Measured in headless Chromium at 1280 px: a code block's column holds 85 characters of
# the theme's monospace font (86 scroll); one character of margin for other fonts.
MAX_CODE_LINE = 84


def test_code_lines_fit_the_page():
    """Code lines short enough to show without a horizontal scrollbar (pages, and every file
    they include, such as recipes and example scripts)."""
    long = [f"{page_id(p)}:{first + i} ({len(line)} chars)" for p in pages()
            for _, first, code in code_blocks(p.read_text())
            for i, line in enumerate(expand_snippets(code).splitlines()) if len(line) > MAX_CODE_LINE]
    assert not long, f"code lines over {MAX_CODE_LINE} characters: " + ", ".join(long)


def test_docstring_example_lines_fit_the_page():
    """The ``Examples::`` the API pages show (``>>> `` included) fit the code column too."""
    long = []
    for test in docstring_tests():
        for example in test.examples:
            lines = [">>> " + line for line in example.source.splitlines()] + example.want.splitlines()
            long += [f"{test.name}: {line!r}" for line in lines if len(line) > MAX_CODE_LINE]
    assert not long, f"docstring example lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)


def public_names() -> dict[str, object]:
    """``{"pkg.Name": obj}`` for every name in the ``__all__`` of each public package that exists."""
    names = {}
    for pkg in PUBLIC_PACKAGES:
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        for name in getattr(mod, "__all__", []):
            if not name.startswith("_"):
                names[f"{pkg}.{name}"] = getattr(mod, name)
    return names


def test_every_public_name_is_on_an_api_page():
    """Each public name is rendered by a ``::: path`` directive, or by one of its package."""
    directives = set()
    for page in (DOCS / "api").glob("*.md"):
        directives |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE))
    objects = {}
    for path in directives:  # resolved as mkdocstrings does: a submodule shadows a same-named attribute
        try:
            objects[path] = importlib.import_module(path)
            continue
        except ImportError:
            pass
        mod, _, attr = path.rpartition(".")
        try:
            objects[path] = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError):
            pytest.fail(f"API page renders {path!r}, which does not exist")
    rendered_ids = {id(o) for o in objects.values()}
    missing = [n for n, obj in public_names().items()
               if id(obj) not in rendered_ids and n.rpartition(".")[0] not in directives
               and not isinstance(obj, (str, int, float, dict, tuple, list))]
    assert not missing, "public names missing from docs/api/*.md: " + ", ".join(sorted(missing))


def docstring_tests():
    finder = doctest.DocTestFinder(recurse=True)
    seen, tests = set(), []
    for pkg in PUBLIC_PACKAGES:  # package docstrings (shown on the package's API page)
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        tests += [t for t in doctest.DocTestFinder(recurse=False).find(mod, pkg) if t.examples]
    for name, obj in public_names().items():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        for t in finder.find(obj, name):
            if t.examples:
                tests.append(t)
    return tests


@pytest.mark.parametrize("test", docstring_tests(), ids=lambda t: t.name)
def test_docstring_examples(test):
    """The ``Examples::`` the API pages show, run as doctests (names of the object's module,
    ``torch``, ``nn`` and smakit's top level in scope)."""
    from torch import nn

    import smakit

    module = sys.modules.get(test.globs.get("__name__", ""))
    globs = dict(vars(module)) if module else dict(test.globs)
    globs.update(torch=torch, nn=nn)
    globs.update({k: getattr(smakit, k) for k in smakit.__all__})
    test.globs = globs
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    try:
        runner.run(test, out=out.append)
    finally:
        torch.set_num_threads(threads)
    assert not runner.failures, "".join(out)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _test_extra_has_docs_tools() -> bool:
    """Whether pyproject's ``test`` extra installs the docs tools (then a missing one is an error)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    return any(req.replace(" ", "").lower().startswith(("mkdocs", "smakit[docs")) for req in extras.get("test", []))


def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict``: nav, links, cross-references and API pages all resolve.

    Not ``-q``: quiet mode drops warnings before strict mode counts them."""
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python", "ruff") if not _importable(m)]
    if missing:
        message = f"mkdocs build needs {missing}: pip install -e '.[docs]'"
        if _test_extra_has_docs_tools():
            pytest.fail(message + " (the test extra lists them, so this run should have them)")
        pytest.skip(message)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    long = [f"{page.relative_to(site).parent.as_posix()}: {line[:60]!r}... ({len(line)} chars)"
            for page in site.rglob("*.html") for line in _pre_lines(page.read_text()) if len(line) > MAX_CODE_LINE]
    assert not long, (f"code or signature lines over {MAX_CODE_LINE} characters in the built site "
                      "(signatures are formatted by ruff, from the test extra):\n" + "\n".join(long))
    assert "smakit " + __import__("smakit").__version__ in (site / "index.html").read_text()
    cli = (site / "cli" / "index.html").read_text()
    assert all(f"smakit {name}" in cli for name in ("recipes", "train", "eval", "generate"))


PRE = re.compile(r"<pre[^>]*>(.*?)</pre>", re.DOTALL)


def _pre_lines(html_text: str) -> list[str]:
    """Text lines of every ``<pre>`` (code blocks, signatures) of a built page."""
    lines = []
    for body in PRE.findall(html_text):
        text = html.unescape(re.sub(r"<[^>]+>", "", body))
        lines += text.splitlines()
    return lines


GUIDE_PAGES = ("install.md", "choosing-a-router.md", "faq.md", "cli.md", "changelog.md")


def test_guide_pages_are_linked():
    """The install, router, FAQ, CLI and changelog pages are in the nav; Home links the
    router guide; the install page clones the repository that mkdocs.yml names."""
    config = (ROOT / "mkdocs.yml").read_text()
    for name in GUIDE_PAGES:
        assert (DOCS / name).is_file() and re.search(rf"^\s+- [^:\n]+: {re.escape(name)}$", config, re.MULTILINE), name
    assert "(choosing-a-router.md)" in (DOCS / "index.md").read_text()
    repo_url = re.search(r"^repo_url: (\S+)$", config, re.MULTILINE).group(1)
    assert f"git clone {repo_url}" in (DOCS / "install.md").read_text()
