"""Server-rendered pages (Jinja2) with small dependency-free JavaScript."""
