"""The template catalog: YAML files describing what users can launch."""

from labhub.catalog.loader import Catalog, load_catalog
from labhub.catalog.schema import Param, Template

__all__ = ["Catalog", "Param", "Template", "load_catalog"]
