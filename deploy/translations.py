"""Extract, update, compile and check the portal's translations (Babel's API, babel.cfg).

    python deploy/translations.py update     # extract messages; merge them into every .po
    python deploy/translations.py compile    # write each .mo from its .po
    python deploy/translations.py check      # fail when a catalogue is incomplete or a .mo stale
    python deploy/translations.py init LANG  # start portal/locale/LANG/LC_MESSAGES/messages.po

`update` keeps existing translations, marks changed ones fuzzy (they need a look) and adds new
messages untranslated; translate them in the .po, then `compile`. The .mo files are committed
so that a fresh clone runs without this step. See docs/translations.md.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from portal.i18n import DEFAULT_LANGUAGE, DOMAIN, LANGUAGES, LOCALE_DIR  # noqa: E402

PROJECT = "authgate"
MAPPING = ROOT / "babel.cfg"
TEMPLATE = LOCALE_DIR / f"{DOMAIN}.pot"


def extract() -> Catalog:
    """Return every translatable message of the portal's code and templates, as babel.cfg says."""
    with MAPPING.open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, filename=str(MAPPING))
    catalog = Catalog(project=PROJECT, fuzzy=False)
    for filename, lineno, message, comments, context in extract_from_dir(
        ROOT, method_map, options_map, strip_comment_tags=True
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(language: str) -> Path:
    return po_path(language).with_suffix(".mo")


def translated_languages() -> list[str]:
    return [language for language in LANGUAGES if language != DEFAULT_LANGUAGE]


def read_catalogue(language: str) -> Catalog:
    with po_path(language).open("rb") as po:
        return read_po(po, locale=language, domain=DOMAIN)


def write_catalogue(path: Path, catalog: Catalog) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    catalog.project, catalog.version, catalog.fuzzy = PROJECT, "0.1.0", False
    catalog.msgid_bugs_address = ""
    catalog.last_translator = catalog.language_team = "authgate contributors"
    what = f"Translation ({catalog.locale})" if catalog.locale else "Message template"
    catalog.header_comment = (
        f"# {what} of the authgate portal (see docs/translations.md).\n"
        "# This file is distributed under the same license as authgate (MIT)."
    )
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=100, ignore_obsolete=True)
    path.write_bytes(buffer.getvalue())


def compiled(catalog: Catalog) -> bytes:
    """Return the .mo bytes of a catalogue (fuzzy entries left out, as gettext would)."""
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def update() -> None:
    template = extract()
    write_catalogue(TEMPLATE, template)
    for language in translated_languages():
        path = po_path(language)
        catalog = read_catalogue(language) if path.exists() else Catalog(locale=language, domain=DOMAIN)
        catalog.update(template, update_header_comment=False)
        write_catalogue(path, catalog)
        print(f"{path.relative_to(ROOT)}: {len(catalog)} messages")


def init(language: str) -> None:
    path = po_path(language)
    if path.exists():
        raise SystemExit(f"{path.relative_to(ROOT)} exists already: use `update`")
    catalog = Catalog(locale=language, domain=DOMAIN, project=PROJECT)
    catalog.update(extract())
    write_catalogue(path, catalog)
    print(f"{path.relative_to(ROOT)}: {len(catalog)} messages to translate; add {language!r} to LANGUAGES")


def compile_all() -> None:
    for language in translated_languages():
        mo_path(language).write_bytes(compiled(read_catalogue(language)))
        print(f"{mo_path(language).relative_to(ROOT)} written")


def problems() -> list[str]:
    """Return what is missing, untranslated, fuzzy or stale in the catalogues (empty: all good)."""
    wanted = {message.id for message in extract() if message.id}
    found: list[str] = []
    for language in translated_languages():
        catalog = read_catalogue(language)
        have = {message.id for message in catalog if message.id}
        found += [f"{language}: missing {msgid!r}" for msgid in sorted(wanted - have, key=str)]
        for message in catalog:
            if not message.id:
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            if not all(strings):
                found.append(f"{language}: untranslated {message.id!r}")
            if message.fuzzy:
                found.append(f"{language}: fuzzy {message.id!r}")
        if not mo_path(language).exists() or mo_path(language).read_bytes() != compiled(catalog):
            found.append(f"{language}: {mo_path(language).relative_to(ROOT)} is not compiled from its .po")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("update", "compile", "check", "init"))
    parser.add_argument("language", nargs="?")
    args = parser.parse_args()
    if args.command == "update":
        update()
    elif args.command == "compile":
        compile_all()
    elif args.command == "init":
        if not args.language:
            parser.error("init needs a language code, e.g. `init it`")
        init(args.language)
    else:
        found = problems()
        print("\n".join(found) or "catalogues complete and compiled")
        raise SystemExit(1 if found else 0)


if __name__ == "__main__":
    main()
