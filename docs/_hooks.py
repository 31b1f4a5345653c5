"""MkDocs hooks: the version in the header, the CLI reference, and the committed benchmark
results on the Benchmarks page.

* The site name in the header carries the package version (``smakit 0.1.0``).
* ``<!-- cli-reference -->`` becomes the ``--help`` text of ``smakit`` and of each of its
  subcommands, rendered from ``smakit.cli.build_parser()`` at the width of a code block.
* ``<!-- recipes-table -->`` becomes a table of every recipe in ``smakit/recipes/`` (name,
  description, model), grouped by page, each linked to the section of its page
  (``recipes/<page>.md#<name>``, the page chosen by the recipe's dataset). A recipe whose
  dataset has no page, or whose page has no section for it, fails the strict build.
* ``{{ results.NAME.PATH | FORMAT }}`` in the text becomes a number from
  ``benchmarks/results/NAME.json``, so prose quoting a measurement stays equal to the table.
  ``PATH`` is dotted; ``key[field=value]`` picks the list item whose ``field`` equals
  ``value``; a name applied to a list maps over it. ``FORMAT`` is a format spec, optionally
  after ``min:`` or ``max:`` to reduce a list (``{{ results.ops_cpu.ops.speedup | max:.1f }}``).
* ``<!-- frontier-summary -->`` becomes plain sentences about ``benchmarks/results/frontier.json``
  (written by ``benchmarks/frontier.py``): per task, the best model at equal wall-clock
  time, the fastest step, the frontier and the cheapest SeqBoat budget.
* Every image under ``benchmarks/results/`` is published at ``benchmarks/results/<name>``,
  so pages link to the plots the scripts wrote, not to copies.
* A line ``<!-- results: NAME -->`` in a page is replaced by
  ``benchmarks/results/NAME.md`` (its title dropped, its headings moved one level down),
  followed by the date and commit of the last change to that file and its plot when there
  is one. A missing results file is a build warning, so ``mkdocs build --strict`` fails.
  ``<!-- results-optional: NAME -->`` says how to produce a missing file instead (results
  that need a GPU, or hours).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- results(?P<optional>-optional)?: (?P<name>[\w.-]+) -->[ \t]*$", re.MULTILINE)
IMAGES = (".png", ".svg")
log = logging.getLogger("mkdocs.hooks.smakit")


def on_config(config):
    from smakit import __version__

    config.site_name = f"smakit {__version__}"
    return config


CLI_MARKER = "<!-- cli-reference -->"
HELP_WIDTH = 80  # characters: fits the code column at 1280 px (tests/test_docs.py)


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH)
    return parser.format_help().rstrip()


def _cli_reference() -> str:
    from smakit.cli import build_parser

    parser = build_parser()
    parts = ["## smakit", "", "```text", _help(parser), "```"]
    for action in parser._actions:  # argparse keeps subcommands on a private action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts += ["", f"## smakit {name}", "", "```text", _help(sub), "```"]
    return "\n".join(parts)


def on_files(files, config):
    if RESULTS.is_dir():
        for path in sorted(RESULTS.iterdir()):
            if path.suffix in IMAGES:
                files.append(File.generated(config, f"benchmarks/results/{path.name}", abs_src_path=str(path)))
    return files


def _last_change(path: Path) -> str:
    """``YYYY-MM-DD, commit abc1234`` of the last commit touching ``path`` (or 'uncommitted')."""
    try:
        out = subprocess.check_output(["git", "log", "-1", "--format=%cs, commit %h", "--", str(path)],
                                      cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out or "not committed yet"


def _demote(markdown: str) -> str:
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("#") else line for line in lines).strip()


def _results(name: str, optional: bool, page) -> str:
    table = RESULTS / f"{name}.md"
    if not table.is_file() and optional:
        return (f"*No published results yet for `{name}` (see [Running the benchmarks]"
                f"(#running-the-benchmarks)).*")
    if not table.is_file():
        log.warning("%s: benchmarks/results/%s.md not found", page.file.src_uri, name)
        return f"*Results `{name}` not found.*"
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth
    parts = [_demote(table.read_text()), "", f"*Results file `benchmarks/results/{name}.md`, "
             f"last updated {_last_change(table)}.*"]
    for ext in IMAGES:
        if (RESULTS / f"{name}{ext}").is_file():
            parts += ["", f"![{name}]({prefix}benchmarks/results/{name}{ext})"]
    return "\n".join(parts)


RECIPES_MARKER = "<!-- recipes-table -->"
RECIPE_PAGES = {"listops": "seqboat-listops", "text": "seqboat-charlm", "image": "seqboat-image",
                "audio": "seqboat-audio", "textclf": "seqboat-textclf"}


def _recipes_table(page) -> str:
    from smakit.train import list_recipes, load_recipe

    rows = []
    for name, description in list_recipes().items():
        recipe = load_recipe(name, "cpu")
        data = recipe.data.get("name", "?")
        target = RECIPE_PAGES.get(data)
        if target is None:
            log.warning("%s: recipe %s trains on %r, which has no recipe page", page.file.src_uri, name, data)
            continue
        model = recipe.model.get("variant") or recipe.model.get("arch", "?")
        size = f"`{model}`, dim {recipe.model.get('dim', '?')}, depth {recipe.model.get('depth', '?')}"
        order = (list(RECIPE_PAGES.values()).index(target), name != target, name)
        rows.append((order, f"| [`{name}`]({target}.md#{name}) | {description.replace('|', '/')} | {size} |"))
    header = ["| recipe | what | model (cpu preset) |", "|---|---|---|"]
    return "\n".join(header + [row for _, row in sorted(rows)])


VALUE = re.compile(r"\{\{\s*results\.([\w-]+)\.([^|}]+?)\s*(?:\|\s*([^}]*?))?\s*\}\}")
SELECT = re.compile(r"^(\w+)\[(\w+)=([^\]]+)\]$")


def _lookup(data, path: str):
    for part in re.findall(r"\w+\[[^\]]*\]|[\w-]+", path):
        m = SELECT.match(part)
        if m:
            key, field, want = m.groups()
            items = [item for item in data[key] if str(item[field]) == want or _same(item[field], want)]
            if len(items) != 1:
                raise KeyError(f"{part}: {len(items)} items match")
            data = items[0]
        elif isinstance(data, list):
            data = [item[part] for item in data]
        else:
            data = data[part]
    return data


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return False


def _value(match: re.Match, page) -> str:
    name, path, spec = match.group(1), match.group(2).strip(), (match.group(3) or "").strip()
    try:
        data = _lookup(json.loads((RESULTS / f"{name}.json").read_text()), path)
        reduce, _, fmt = spec.rpartition(":") if spec.startswith(("min:", "max:")) else ("", "", spec)
        if reduce:
            data = min(data) if reduce == "min" else max(data)
        return format(data, fmt)
    except (OSError, KeyError, IndexError, TypeError, ValueError) as err:
        log.warning("%s: cannot read {{ results.%s.%s }}: %s", page.file.src_uri, name, path, err)
        return match.group(0)


FRONTIER_MARKER = "<!-- frontier-summary -->"
TASK_NAMES = {"listops": "ListOps", "charlm": "Char-LM (Shakespeare, 1,024-byte sequences)"}


def _score(value: float, metric: str) -> str:
    return f"{value:.1%} accuracy" if metric == "accuracy" else f"{value:.3f} bits per byte"


def _margin(value: float, metric: str) -> str:
    return f"{value * 100:g} accuracy points" if metric == "accuracy" else f"{value:g} bits per byte"


def _frontier_summary(page) -> str:
    """Sentences read from ``frontier.json``: which model did the most with the same minutes."""
    path = RESULTS / "frontier.json"
    if not path.is_file():
        return ""  # the results-optional marker below says so
    data = json.loads(path.read_text())
    lines = []
    if data.get("quick"):
        log.warning("%s: benchmarks/results/frontier.json holds a --quick smoke run", page.file.src_uri)
    for task, s in data.get("summary", {}).items():
        metric, best, fast = s["metric"], s["best"], s["fastest"]
        text = (f"- **{TASK_NAMES.get(task, task)}**, {s['minutes']:g} minutes per model: "
                f"**{best['label']}** did the most with them ({_score(best['quality'], metric)}, "
                f"{best['steps']:,} steps of {best['step_ms']:,.0f} ms)")
        if s.get("runner_up"):
            text += f", ahead of {s['runner_up']['label']} ({_score(s['runner_up']['quality'], metric)})"
        text += "."
        if fast["model"] != best["model"]:
            text += (f" The fastest step was {fast['label']}'s ({fast['step_ms']:,.0f} ms, "
                     f"{_score(fast['quality'], metric)}).")
        text += f" On the frontier, from fast to accurate: {s['frontier_text']}."
        budget = s.get("budget")
        if budget and budget.get("target") is not None:
            activation = " / ".join(f"{a:.2f}" for a in budget["activation"] or [])
            text += (f" The smallest SeqBoat budget within {_margin(s['small_cost'], metric)} of the free router is "
                     f"{budget['target']:g} (realised activation {activation}; "
                     f"{_score(budget['quality'], metric)} against {_score(budget['free_quality'], metric)}).")
        elif budget:
            text += f" No SeqBoat budget came within {_margin(s['small_cost'], metric)} of the free router."
        lines.append(text)
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    markdown = VALUE.sub(lambda m: _value(m, page), markdown)
    if RECIPES_MARKER in markdown:
        markdown = markdown.replace(RECIPES_MARKER, _recipes_table(page))
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, _cli_reference())
    if FRONTIER_MARKER in markdown:
        markdown = markdown.replace(FRONTIER_MARKER, _frontier_summary(page))
    return MARKER.sub(lambda m: _results(m.group("name"), bool(m.group("optional")), page), markdown)
