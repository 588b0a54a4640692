"""MkDocs hooks: the reference pages generated at build time from the code itself.

A page asks for a generated section with a marker on its own line:

- ``<!-- generated: config -->`` — every ``flywheel.yaml`` key, from the pydantic config models;
- ``<!-- generated: cli -->`` — every ``flywheel`` command and option, from the Typer app;
- ``<!-- generated: http -->`` — every HTTP route, from the app's OpenAPI document.

Everything is computed offline, in this process, from the installed source tree; nothing is
written into ``docs/``. Run as a script (``python tools/docs_hooks.py config|cli|http``) to print
one section.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


# -- flywheel.yaml ------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    text = re.sub(r"\b(?:typing|pathlib|flywheel\.config)\.", "", text)
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    return text.replace("NoneType", "None")


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _doc(model: type) -> str:
    return " ".join((model.__doc__ or "").split())


def config_reference() -> str:
    """One table per ``flywheel.yaml`` section: key, type, default, constraints."""
    from pydantic import BaseModel

    from flywheel.config import DEFAULT_CONFIG_TEXT, FlywheelConfig

    lines: list[str] = [
        "The defaults that `flywheel init` writes:",
        "",
        "```yaml",
        DEFAULT_CONFIG_TEXT.format(project="shop").rstrip(),
        "```",
        "",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, f"{prefix}{name}"))
                continue
            default = field.get_default(call_default_factory=True)
            shown = "—" if default is None else f"`{default!r}`"
            rows.append(
                f"| `{prefix}{name}` | `{_cell(_type_name(annotation))}` | {_cell(shown)} "
                f"| {_cell(_constraints(field))} |"
            )
        if rows:
            lines.extend([f"### `{prefix.rstrip('.') or 'top level'}`", ""])
            if prefix:
                lines.extend([_doc(model), ""])
            lines.extend(["| key | type | default | allowed |", "|---|---|---|---|", *rows, ""])
        for sub, path in nested:
            section(sub, path + ".")

    section(FlywheelConfig, "")
    return "\n".join(lines)


# -- the flywheel command ----------------------------------------------------------------


def _is_group(command: Any) -> bool:
    # Typer vendors its own click; duck-type instead of isinstance(click.Group).
    return isinstance(getattr(command, "commands", None), dict)


def _walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    if _is_group(command):
        for name, sub in command.commands.items():
            if not sub.hidden:
                yield from _walk(sub, [*path, name])


def cli_reference() -> str:
    """Every command with its help text, arguments and options, from the Typer app."""
    import typer.main

    from flywheel.cli import app

    root = typer.main.get_command(app)
    lines: list[str] = []
    for path, command in _walk(root, ["flywheel"]):
        if _is_group(command) and len(path) == 1:
            continue
        depth = min(len(path), 3) + 1
        lines.extend([f"{'#' * depth} `{' '.join(path)}`", ""])
        help_text = (command.help or "").strip()
        if help_text:
            lines.extend([help_text.split("\b")[0].strip(), ""])
        if _is_group(command):
            continue
        rows = []
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            if param.param_type_name == "argument":
                name = f"`{(param.name or '').upper()}`"
                kind = "argument"
            else:
                name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
                kind = "option"
            default = param.default
            if default in (None, (), []) or callable(default):
                shown = ""
            else:
                shown = f"`{default!r}`" if isinstance(default, str) else f"`{default}`"
            help_ = getattr(param, "help", None) or ""
            rows.append(f"| {name} | {kind} | {_cell(shown)} | {_cell(help_)} |")
        if rows:
            lines.extend(["| name | kind | default | help |", "|---|---|---|---|", *rows, ""])
    return "\n".join(lines)


# -- HTTP ------------------------------------------------------------------------------------


@cache
def _openapi() -> dict[str, Any]:
    from flywheel.api import create_app
    from flywheel.config import FlywheelConfig
    from flywheel.project import Project

    with tempfile.TemporaryDirectory() as root:
        document: dict[str, Any] = create_app(Project(FlywheelConfig(root=root))).openapi()
    return document


def http_reference() -> str:
    """Every route of ``flywheel up`` grouped by tag, from the OpenAPI document."""
    document = _openapi()
    by_tag: dict[str, list[str]] = {}
    for route, methods in document["paths"].items():
        for method, operation in methods.items():
            tag = (operation.get("tags") or ["other"])[0]
            summary = operation.get("summary") or ""
            description = " ".join((operation.get("description") or "").split())
            params = ", ".join(
                f"`{p['name']}`" + ("" if p.get("required") else "?")
                for p in operation.get("parameters", [])
            )
            codes = ", ".join(sorted(operation.get("responses", {})))
            text = description or summary
            by_tag.setdefault(tag, []).append(
                f"| `{method.upper()} {route}` | {_cell(text)} | {params} | {codes} |"
            )
    lines = [
        f"Generated from the OpenAPI document of Flywheel {document['info']['version']} "
        "(a running server serves it at `/openapi.json` and renders it at `/docs`).",
        "",
    ]
    for tag in sorted(by_tag):
        lines.extend(
            [
                f"## {tag}",
                "",
                "| route | what it does | parameters (`?` optional) | responses |",
                "|---|---|---|---|",
                *by_tag[tag],
                "",
            ]
        )
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "config": config_reference,
    "cli": cli_reference,
    "http": http_reference,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: replace each generated-section marker with its section."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated section {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


if __name__ == "__main__":
    print(GENERATORS[sys.argv[1]]())
