"""The portal's catalogues are complete: every string is marked, extracted, translated and compiled.

Extraction uses Babel's API with babel.cfg, as deploy/translations.py does; each .po of
portal/locale must hold every message, translated (no empty msgstr, nothing fuzzy), with the
same %(name)s placeholders as the English text, and its committed .mo must be compiled from it.
Templates are also checked for text that is not marked at all (so extraction cannot see it).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import jinja2
import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from jinja2 import nodes

from portal.i18n import DEFAULT_LANGUAGE, LANGUAGES, LOCALE_DIR, translator
from portal.web import TEMPLATES

ROOT = Path(__file__).resolve().parents[2]
TRANSLATED = [language for language in LANGUAGES if language != DEFAULT_LANGUAGE]
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")
# Text in templates that is not language: arrows, dashes, separators, example input formats.
NOT_WORDS = re.compile(r"&[a-z]+;|xxxx-xxxx-xxxx|cal\.example\.com, \*\.dav\.example\.com")
HUMAN_ATTRIBUTES = re.compile(r'\b(?:aria-label|placeholder|title|alt)="([^"]*)"')


def _extracted() -> dict[object, tuple[str, int]]:
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, filename="babel.cfg")
    found: dict[object, tuple[str, int]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(ROOT, method_map, options_map):
        found.setdefault(message, (filename, lineno))
    return found


EXTRACTED = _extracted()


def _catalogue(language: str) -> Catalog:
    with (LOCALE_DIR / language / "LC_MESSAGES" / "messages.po").open("rb") as po:
        return read_po(po, locale=language)


def _messages(catalog: Catalog) -> list[Message]:
    return [message for message in catalog if message.id]


def test_extraction_finds_the_portal() -> None:
    """Extraction sees templates, views and the scripts' messages (a broken babel.cfg finds nothing)."""
    files = {filename for filename, _ in EXTRACTED.values()}
    assert any(name.startswith("portal/templates/") for name in files)
    assert any(name.startswith("portal/views/") for name in files)
    assert "Sign in" in EXTRACTED and "Incorrect username or password." in EXTRACTED
    assert "Follow your browser's prompt..." in EXTRACTED  # static/*.js via web.SCRIPT_MESSAGES


@pytest.mark.parametrize("language", TRANSLATED)
def test_catalogue_has_every_message(language: str) -> None:
    """No extracted message is missing from the .po, and the .po holds no stale ones."""
    have = {message.id for message in _messages(_catalogue(language))}
    wanted = {key if isinstance(key, str) else tuple(key) for key in EXTRACTED}
    missing = sorted(map(str, wanted - have))
    stale = sorted(map(str, have - wanted))
    assert not missing, f"{language}: run `python deploy/translations.py update` and translate {missing}"
    assert not stale, f"{language}: messages no longer in the code: {stale}"


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_message_is_translated(language: str) -> None:
    """Every msgstr (every plural form) is filled in, and nothing is left fuzzy."""
    catalog = _catalogue(language)
    empty = [
        m.id for m in _messages(catalog) if not all(m.string if isinstance(m.string, tuple) else [m.string])
    ]
    fuzzy = [m.id for m in _messages(catalog) if m.fuzzy]
    assert not empty, f"{language}: untranslated {empty}"
    assert not fuzzy, f"{language}: fuzzy {fuzzy}"
    if catalog.num_plurals > 1:
        short = [m.id for m in _messages(catalog) if m.pluralizable and len(m.string) != catalog.num_plurals]
        assert not short, f"{language}: wrong number of plural forms for {short}"


@pytest.mark.parametrize("language", TRANSLATED)
def test_placeholders_match(language: str) -> None:
    """Each translation uses exactly the English text's %(name)s placeholders (plurals: per form)."""
    wrong = []
    for message in _messages(_catalogue(language)):
        if message.pluralizable:
            singular, plural = message.id
            expected = [singular] + [plural] * (len(message.string) - 1)
            pairs = list(zip(expected, message.string, strict=True))
        else:
            pairs = [(message.id, message.string)]
        for english, translated in pairs:
            if sorted(PLACEHOLDER.findall(english)) != sorted(PLACEHOLDER.findall(translated)):
                wrong.append((english, translated))
    assert not wrong, f"{language}: placeholders differ in {wrong}"


@pytest.mark.parametrize("language", TRANSLATED)
def test_markup_matches(language: str) -> None:
    """HTML tags in a message (<strong>, <code>) survive translation unchanged in number and kind."""
    tags = re.compile(r"</?[a-z]+")
    wrong = [
        m.id
        for m in _messages(_catalogue(language))
        if not m.pluralizable and sorted(tags.findall(m.id)) != sorted(tags.findall(m.string))
    ]
    assert not wrong, f"{language}: markup differs in {wrong}"


@pytest.mark.parametrize("language", TRANSLATED)
def test_mo_is_compiled_from_po(language: str) -> None:
    """The committed .mo holds exactly the .po's translations (run `deploy/translations.py compile`)."""
    catalog = _catalogue(language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    mo = LOCALE_DIR / language / "LC_MESSAGES" / "messages.mo"
    assert mo.read_bytes() == buffer.getvalue(), f"{mo} is stale: run `python deploy/translations.py compile`"
    with mo.open("rb") as handle:
        compiled = {_plain(m.id): _plain(m.string) for m in read_mo(handle) if m.id}
    assert compiled == {_plain(m.id): _plain(m.string) for m in _messages(catalog)}


def _plain(value: object) -> object:
    return tuple(value) if isinstance(value, list | tuple) else value


def _unmarked_text(source: str) -> list[str]:
    """Return human text of a template that is not inside _()/{% trans %} (extraction misses it)."""
    # Jinja constructs become a marker, so that tags are whole again and only literal text is left.
    literal = re.sub(r"\{%-? *trans\b.*?endtrans *-?%\}", "§", source, flags=re.S)
    literal = re.sub(r"\{#.*?#\}|\{\{.*?\}\}|\{%.*?%\}", "§", literal, flags=re.S)
    literal = NOT_WORDS.sub("", literal)
    found = [value for value in HUMAN_ATTRIBUTES.findall(literal) if re.search(r"[A-Za-z]{2}", value)]
    found += re.findall(r"[A-Za-z][A-Za-z'.]+", re.sub(r"<[^>]*>", " ", literal))

    def visit(node: nodes.Node, parent: nodes.Node | None) -> None:
        # A string constant printed as is: {{ "text" }}, {{ a or "text" }}, {{ "x" if c else "y" }}.
        if isinstance(node, nodes.Const) and isinstance(node.value, str):
            if isinstance(parent, nodes.Output | nodes.CondExpr | nodes.Or) and re.search(
                "[A-Za-z]{2}", node.value
            ):
                found.append(node.value)
        if (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Name)
            and node.node.name in {"_", "gettext"}
        ):
            return
        for child in node.iter_child_nodes():
            visit(child, node)

    visit(TEMPLATES.parse(source), None)
    return found


@pytest.mark.parametrize("template", sorted(TEMPLATES.list_templates(extensions=["html"])))
def test_template_text_is_marked(template: str) -> None:
    """Every human text in a template goes through _() or {% trans %}; none is left as plain text."""
    assert _unmarked_text(TEMPLATES.loader.get_source(TEMPLATES, template)[0]) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("<p>Sign in</p>", ["Sign", "in"], id="text"),
        pytest.param('<input placeholder="Your name">', ["Your name"], id="attribute"),
        pytest.param('<a href="{{ base }}/" aria-label="Back">&larr;</a>', ["Back"], id="label"),
        pytest.param('{{ "none" if x else y }}', ["none"], id="constant"),
        pytest.param('{{ _("Sign in") }} &middot; {{ title }}', [], id="marked"),
        pytest.param("{% trans n=1 %}Hi {{ n }}{% endtrans %}", [], id="trans block"),
        pytest.param('<p class="or" id="x">{{ x or "–" }}</p>', [], id="markup only"),
    ],
)
def test_unmarked_text_is_found(source: str, expected: list[str]) -> None:
    """The check above finds plain text, human attributes and printed constants, and nothing else."""
    assert _unmarked_text(source) == expected


@pytest.mark.parametrize("language", list(LANGUAGES))
@pytest.mark.parametrize("template", sorted(TEMPLATES.list_templates(extensions=["html"])))
def test_every_template_compiles_with_i18n(template: str, language: str) -> None:
    """Each template compiles with the i18n extension, and the translator exists for each language."""
    assert TEMPLATES.get_template(template) is not None
    assert translator(language).language == language


def test_imported_macro_without_context_is_refused() -> None:
    """A macro imported without context would speak English silently: it raises instead."""
    env = TEMPLATES.overlay(
        loader=jinja2.DictLoader({"m.html": "{% macro m() %}{{ _('Sign in') }}{% endmacro %}"})
    )
    page = env.from_string('{% from "m.html" import m %}{{ m() }}')
    with pytest.raises(RuntimeError, match="with context"):
        page.render(translator=translator("de"))
    fixed = env.from_string('{% from "m.html" import m with context %}{{ m() }}')
    assert fixed.render(translator=translator("de")) == "Anmelden"
