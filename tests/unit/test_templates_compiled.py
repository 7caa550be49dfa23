"""Workers compile every portal template at start-up, so no login pays for a compile."""

from __future__ import annotations

from pathlib import Path

from portal.web import TEMPLATES, compile_templates

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "portal" / "templates"


def test_every_template_is_compiled_and_kept() -> None:
    names = compile_templates()

    assert sorted(names) == sorted(p.name for p in TEMPLATE_DIR.glob("*.html"))
    # jinja2 hands out the compiled template it keeps: asking again compiles nothing.
    assert all(TEMPLATES.get_template(name) is TEMPLATES.get_template(name) for name in names)


def test_templates_are_not_checked_on_disk_per_request() -> None:
    """Templates ship with the code: no stat() of the file at every render."""
    assert TEMPLATES.auto_reload is False
