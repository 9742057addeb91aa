"""Prompt templates (Jinja): how a problem becomes the user text a policy sees.

Shared by ``prepare`` (training prompts) and ``eval`` (benchmark prompts), so a benchmark asks
exactly as training did. Built-in templates are the ``*.jinja`` files beside this module; a
template sees ``problem`` and ``choices`` (a list, empty when the problem has none).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from stages.errors import MgpoError

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
)


def builtin_templates() -> dict[str, str]:
    """Built-in templates by name (file stem) -> their text."""
    folder = resources.files(__name__)
    return {
        Path(str(f)).stem: f.read_text(encoding="utf-8")
        for f in folder.iterdir()
        if str(f).endswith(".jinja")
    }


def load_template(name_or_path: str) -> jinja2.Template:
    """A built-in template by name, or a Jinja file by path; it sees ``problem`` and ``choices``."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        known = builtin_templates()
        if name_or_path not in known:
            raise MgpoError(
                f"--template '{name_or_path}' is neither a file nor a built-in template"
                f" ({', '.join(sorted(known))})"
            )
        text = known[name_or_path]
    try:
        return _ENV.from_string(text.strip())
    except jinja2.TemplateSyntaxError as error:
        raise MgpoError(
            f"--template {name_or_path}: line {error.lineno}: {error.message}"
        ) from None


def render(template: jinja2.Template, problem: str, choices: list[str] | None) -> str:
    """The user text for one problem; an unknown variable in the template is one clear line."""
    try:
        return template.render(problem=problem, choices=choices or [])
    except jinja2.UndefinedError as error:
        raise MgpoError(
            f"template uses an unknown variable ({error.message}); it sees problem, choices"
        ) from None
