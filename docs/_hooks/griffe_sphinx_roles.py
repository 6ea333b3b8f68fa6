"""Griffe extension: turn Sphinx roles in phasejax docstrings into mkdocs cross-references.

The docstrings use ``:class:`PhaseType```, ``:func:`~phasejax.infer.svgd```,
``:meth:`logpdf``` and so on. Markdown would print the role name literally, so each
role is rewritten before the docstring is parsed:

- to an autorefs link ``[`PhaseType`][phasejax.PhaseType]`` when the target resolves
  to an object that the API pages render (a name exported by one of the public
  modules, or a documented member of such a class), so links never dangle (strict
  mode would fail on an unresolved cross-reference);
- to plain inline code otherwise (private helpers such as ``_relative_left``).

A reST literal-block marker is rewritten too: ``Example::`` becomes a bold
``**Example:**`` (a plain ``Example:`` would be read as a Google-style section and
lose the indentation of the code below it), and ``text::`` becomes ``text:``; the
indented block that follows stays a code block.

Names resolve like Sphinx does: a dotted path from the package root, then relative to
the documented object and its parents, then by unique short name among the public
exports. ``~`` shows only the last component.

This runs at documentation build time only; the package source is not modified.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|obj|exc):`(~?)([^`<>]+?)`")
# reST literal-block markers: a title line "Example::" and a trailing "text::"
LITERAL_TITLE = re.compile(r"^(\s*)(\w[\w ]*)::[ \t]*$", re.MULTILINE)
LITERAL_TAIL = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)


def _final(obj):
    """The object behind an alias (``None`` if it cannot be resolved)."""
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in docstrings of the given package.

    **Options** (in ``mkdocs.yml``):

    - `package`: the package whose docstrings are rewritten (``phasejax``).
    - `public_modules`: modules rendered on the API pages with their exported names
      (modules that are missing are skipped).
    - `public_objects`: further objects rendered under their own path.
    """

    def __init__(
        self,
        package: str = "phasejax",
        public_modules: list[str] | None = None,
        public_objects: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.package = package
        self.public_modules = public_modules or [package]
        self.public_objects = public_objects or []

    # -- public map ---------------------------------------------------------------
    def _exports(self, module) -> list[str]:
        if module.exports is not None:
            return [str(name) for name in module.exports]
        return [name for name in module.members if not name.startswith("_")]

    def _build_public(self, root) -> None:
        self.public: dict[str, str] = {}
        self.by_name: dict[str, list[str]] = defaultdict(list)

        def add(obj, public_path: str) -> None:
            if not obj.has_docstrings:  # not rendered (show_if_no_docstring is off)
                return
            for path in {obj.path, obj.canonical_path}:
                self.public.setdefault(path, public_path)
            self.by_name[public_path.rsplit(".", 1)[-1]].append(public_path)
            if obj.is_class:
                try:
                    members = obj.all_members
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    members = obj.members
                for name, member in members.items():
                    target = _final(member)
                    if target is None or target.docstring is None:
                        continue
                    if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                        continue
                    for path in {f"{obj.path}.{name}", target.path, target.canonical_path}:
                        self.public.setdefault(path, f"{public_path}.{name}")

        for module_path in self.public_modules:
            module = self._lookup(root, module_path)
            if module is None or not module.is_module:
                continue
            self.public.setdefault(module.path, module_path)
            for name in self._exports(module):
                if name not in module.members:
                    continue
                target = _final(module.members[name])
                if target is None or target.is_module:
                    continue
                add(target, f"{module_path}.{name}")
        for path in self.public_objects:
            target = self._lookup(root, path)
            if target is not None:
                add(target, path)

    def _lookup(self, root, path: str):
        """The object at a dotted path from the package root, or ``None``."""
        parts = path.split(".")
        if parts[0] != root.name:
            return None
        obj = root
        for part in parts[1:]:
            obj = _final(obj)
            if obj is None or part not in obj.members:
                return None
            obj = obj.members[part]
        return _final(obj)

    # -- resolution ---------------------------------------------------------------
    def _resolve(self, root, scope, target: str) -> str | None:
        """Public path of ``target`` as seen from ``scope``, or ``None``."""
        candidates = []
        if target.split(".")[0] == root.name:
            candidates.append(self._lookup(root, target))
        obj = scope
        while obj is not None:
            if obj.is_module or obj.is_class:
                candidates.append(self._lookup(root, f"{obj.path}.{target}"))
            obj = obj.parent
        for found in candidates:
            if found is not None:
                public = self.public.get(found.path) or self.public.get(found.canonical_path)
                if public is not None:
                    return public
        matches = sorted(set(self.by_name.get(target.rsplit(".", 1)[-1], [])))
        if len(matches) == 1 and (target.count(".") == 0 or matches[0].endswith(target)):
            return matches[0]
        return None

    def _rewrite(self, root, obj) -> None:
        docstring = obj.docstring
        if docstring is None or ":" not in docstring.value:
            return
        value = LITERAL_TITLE.sub(r"\1**\2:**", docstring.value)
        value = LITERAL_TAIL.sub(r"\1:", value)

        def replace(match: re.Match) -> str:
            _, tilde, target = match.groups()
            target = target.strip()
            shown = target.rsplit(".", 1)[-1] if tilde else target
            public = self._resolve(root, obj, target.lstrip("."))
            return f"[`{shown}`][{public}]" if public else f"`{shown}`"

        docstring.value = ROLE.sub(replace, value)

    def on_package(self, *, pkg, **kwargs: Any) -> None:
        if pkg.name != self.package:
            return
        self._build_public(pkg)
        seen = set()

        def walk(obj) -> None:
            if obj.is_alias or id(obj) in seen:
                return
            seen.add(id(obj))
            self._rewrite(pkg, obj)
            for member in obj.members.values():
                walk(member)

        walk(pkg)

    def on_package_loaded(self, *, pkg, **kwargs: Any) -> None:
        """The same hook under its griffe 1.x name (griffe >= 2 calls ``on_package``)."""
        self.on_package(pkg=pkg, **kwargs)
