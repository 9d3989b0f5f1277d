"""Loading templates from the package's built-ins and a site directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from labhub.catalog.schema import Template

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass
class Catalog:
    """Templates by name, plus the problems found while loading them."""

    templates: dict[str, Template] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """What is derived from this catalog once and reused (the API's serialised templates).  A catalog
    is not changed once loaded; a reload is a new catalog, and starts with an empty memo."""

    def get(self, name: str) -> Template | None:
        return self.templates.get(name)

    def __iter__(self):  # noqa: ANN204 - iterator of Template
        return iter(sorted(self.templates.values(), key=lambda t: t.name))


def _load_file(path: Path) -> tuple[Template | None, str | None]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, f"{path}: cannot read: {exc}"
    if not isinstance(raw, dict):
        return None, f"{path}: a template must be a YAML mapping"
    raw.setdefault("name", path.stem)
    try:
        template = Template.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        return None, f"{path}: {problems}"
    template.source = str(path)
    return template, None


def load_catalog(site_dir: Path | None = None) -> Catalog:
    """Built-ins first, then ``site_dir`` (a site template replaces a built-in of the same name).

    Invalid files are reported in ``Catalog.errors`` (file and field) and
    logged; they never stop the hub.
    """
    catalog = Catalog()
    dirs = [BUILTIN_DIR] + ([site_dir] if site_dir is not None else [])
    for directory in dirs:
        if not directory.is_dir():
            if directory is not BUILTIN_DIR:
                catalog.errors.append(f"{directory}: templates directory does not exist")
            continue
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            template, error = _load_file(path)
            if error:
                catalog.errors.append(error)
                log.warning("invalid template: %s", error)
            elif template is not None:
                catalog.templates[template.name] = template
    return catalog
