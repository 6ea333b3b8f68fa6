"""MkDocs hook: pages that depend on files outside ``docs/``.

- **Notebooks.** ``notebooks/*.ipynb`` (at the repository root) are added to the site
  under ``notebooks/`` and to the navigation, titled by their first heading (up to a
  colon, in the navigation). They are
  rendered by mkdocs-jupyter without being executed. The ``Notebooks`` page lists them;
  with no notebooks the site still builds (the page says so).
- **phasejax.plot.** The API page of ``phasejax.plot`` is generated, and put in the
  navigation, only when ``src/phasejax/plot.py`` (or a ``plot/`` package) exists.
- **Links between notebooks.** A link such as ``02_moments.ipynb#rewards`` inside a
  rendered notebook is pointed at that notebook's page.
- **Complete API pages.** The API pages list objects by topic. A page carrying
  ``<!-- remaining-exports: MODULE -->`` also gets, at that spot, every name in
  ``MODULE.__all__`` that the page does not document yet, so an export added later
  is documented (and cross-references to it resolve) without editing the page.

All of this is decided when the build starts, so ``mkdocs build --strict`` never sees a
navigation entry or a link to a missing file.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File
from mkdocs.utils import get_relative_url

NOTEBOOK_DIR = "notebooks"
PLOT_PAGE = "api/plot.md"
PLOT_SOURCE = """# phasejax.plot

Matplotlib figures for phase-type distributions (needs the `plot` extra:
`pip install "phasejax[plot]"`).

::: phasejax.plot
    options:
      show_root_heading: false
      heading_level: 2
"""
LIST_MARKER = "<!-- notebook-list -->"
REMAINING = re.compile(r"<!-- remaining-exports: ([\w.]+) -->")
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.MULTILINE)

_state: dict = {"notebooks": [], "plot": False}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _notebook_title(path: Path) -> str:
    """The first markdown heading of a notebook, else a title made from its file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        for line in source.splitlines():
            heading = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
            if heading:
                return re.sub(r"[*_`]", "", heading.group(1)).strip()
    stem = re.sub(r"^\d+[_-]*", "", path.stem)
    return stem.replace("_", " ").replace("-", " ").strip().capitalize() or path.stem


def _find_nav_section(nav: list, title: str) -> list | None:
    for item in nav:
        if isinstance(item, dict) and title in item and isinstance(item[title], list):
            return item[title]
    return None


def on_config(config):
    root = _root(config)
    notebook_dir = root / NOTEBOOK_DIR
    notebooks = sorted(notebook_dir.glob("*.ipynb")) if notebook_dir.is_dir() else []
    _state["notebooks"] = [(f"{NOTEBOOK_DIR}/{p.name}", _notebook_title(p)) for p in notebooks]
    src = root / "src" / "phasejax"
    _state["plot"] = (src / "plot.py").is_file() or (src / "plot" / "__init__.py").is_file()
    nav = config.nav or []
    section = _find_nav_section(nav, "Notebooks")
    if section is not None:  # short titles in the navigation: "Quickstart: ..." -> "Quickstart"
        section.extend({title.split(":", 1)[0].strip() or title: path} for path, title in _state["notebooks"])
    api = _find_nav_section(nav, "API reference")
    if api is not None and _state["plot"]:
        api.append({"phasejax.plot": PLOT_PAGE})
    return config


@event_priority(50)  # before mkdocs-jupyter wraps the notebook files
def on_files(files, config):
    root = _root(config)
    for path, _ in _state["notebooks"]:
        files.append(
            File(path, src_dir=str(root), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls)
        )
    if _state["plot"]:
        files.append(File.generated(config, PLOT_PAGE, content=PLOT_SOURCE))
    return files


def _module_source(root: Path, module: str) -> tuple[Path | None, bool]:
    """Source file of a module under ``src/`` and whether it is a package."""
    base = root / "src" / Path(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    return None, False


def _exports(root: Path, module: str) -> list[str]:
    """Names in ``module.__all__`` (read statically), submodules left out."""
    path, is_package = _module_source(root, module)
    if path is None:
        return []
    names: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            try:
                names = [str(n) for n in ast.literal_eval(node.value)]
            except ValueError:
                names = []
    if is_package:
        names = [n for n in names if _module_source(root, f"{module}.{n}")[0] is None]
    return names


def _remaining(markdown: str, config) -> str:
    documented = set(DIRECTIVE.findall(markdown))
    root = _root(config)

    def fill(match: re.Match) -> str:
        module = match.group(1)
        missing = [n for n in _exports(root, module) if f"{module}.{n}" not in documented]
        if not missing:
            return ""
        blocks = "\n\n".join(f"::: {module}.{name}" for name in missing)
        return f"## Also exported\n\n{blocks}\n"

    return REMAINING.sub(fill, markdown)


def on_page_markdown(markdown, page, config, files):
    if REMAINING.search(markdown):
        markdown = _remaining(markdown, config)
    if LIST_MARKER not in markdown:
        return markdown
    if _state["notebooks"]:
        lines = [f"- [{title}]({path})" for path, title in _state["notebooks"]]
        listing = "\n".join(lines)
    else:
        listing = (
            "!!! note\n    No notebooks were found in `notebooks/` when this site was built."
        )
    return markdown.replace(LIST_MARKER, listing)


NOTEBOOK_LINK = re.compile(r'href="(?:\./)?([^"/:#?]+\.ipynb)(#[^"]*)?"')


def on_page_content(html, page, config, files):
    """Point links to sibling notebooks (``href="02_x.ipynb"``) at their pages."""
    src = page.file.src_uri
    if not (src.startswith(f"{NOTEBOOK_DIR}/") and src.endswith(".ipynb")):
        return html
    known = {path.rsplit("/", 1)[-1]: path for path, _ in _state["notebooks"]}

    def relink(match: re.Match) -> str:
        target = known.get(match.group(1))
        if target is None:
            return match.group(0)
        file = files.get_file_from_path(target)
        if file is None:
            return match.group(0)
        return f'href="{get_relative_url(file.url, page.url)}{match.group(2) or ""}"'

    return NOTEBOOK_LINK.sub(relink, html)


def on_serve(server, config, builder):
    notebook_dir = _root(config) / NOTEBOOK_DIR
    if notebook_dir.is_dir():
        server.watch(str(notebook_dir))
    return server
