"""PostgreSQL connection strings (pure): check their shape and show them without the password."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

SCHEMES = ("postgresql", "postgres")


def dsn_problem(dsn: str) -> str | None:
    """Return why `dsn` is not a usable postgresql:// URI, or None; never repeats the DSN itself."""
    text = dsn.strip()
    if not text:
        return "is empty; give a URI like postgresql://authgate@db.example.com:5432/authgate"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is not a valid URI ({exc}); use postgresql://user:password@host:port/database"
    if parts.scheme not in SCHEMES:
        return (
            "must start with postgresql:// (key=value connection strings are not supported); "
            "use postgresql://user:password@host:port/database"
        )
    if not unquote(parts.path).lstrip("/"):
        return "names no database; add it after the host, as in postgresql://user@host:5432/authgate"
    return None


def redact_dsn(dsn: str) -> str:
    """Return the DSN with its password (in the URI or a password= query value) replaced by ***."""
    try:
        parts = urlsplit(dsn.strip())
    except ValueError:
        return "(unparsable connection string)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
    query = "&".join(
        "password=***" if item.split("=", 1)[0].lower() == "password" else item
        for item in parts.query.split("&")
        if item
    )
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{rebuilt}?{query}" if query else rebuilt
