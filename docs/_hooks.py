"""MkDocs hooks: put the committed benchmark results on the Benchmarks page.

* Every image under ``benchmarks/results/`` is published at ``benchmarks/results/<name>``,
  so pages link to the plots the scripts wrote, not to copies.
* A line ``<!-- results: NAME -->`` in a page is replaced by
  ``benchmarks/results/NAME.md`` (its title dropped, its headings moved one level down),
  followed by the date and commit of the last change to that file and its plot when there
  is one. A missing results file is a build warning, so ``mkdocs build --strict`` fails.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- results: ([\w.-]+) -->\s*$", re.MULTILINE)
IMAGES = (".png", ".svg")
log = logging.getLogger("mkdocs.hooks.smakit")


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


def _results(name: str, page) -> str:
    table = RESULTS / f"{name}.md"
    if not table.is_file():
        log.warning("%s: benchmarks/results/%s.md not found", page.file.src_uri, name)
        return f"*Results `{name}` not found.*"
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth
    parts = [_demote(table.read_text()), "", f"*Results file `benchmarks/results/{name}.md`, "
             f"last updated {_last_change(table)}.*"]
    for ext in IMAGES:
        if (RESULTS / f"{name}{ext}").is_file():
            parts += ["", f"![{name}]({prefix}benchmarks/results/{name}{ext}){{ width=\"520\" }}"]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(lambda m: _results(m.group(1), page), markdown)
