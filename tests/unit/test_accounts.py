"""Validation of account fields: usernames, e-mails, display names and groups."""

from __future__ import annotations

import pytest

from gateway.accounts.validation import (
    parse_groups,
    validate_display_name,
    validate_email,
    validate_groups,
    validate_username,
)


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith", "x_y-z", "0day", "a" * 64])
def test_valid_usernames(name: str) -> None:
    """Lower-case letters, digits, '.', '_' and '-' starting with a letter or digit are fine."""
    assert validate_username(name) is None


@pytest.mark.parametrize(
    "name", ["", "Alice", "-bob", ".bob", "bob smith", "bob@example.com", "a" * 65, "bøb", "bob\n", "bob/"]
)
def test_invalid_usernames(name: str) -> None:
    """Anything else is refused with a message naming the value."""
    problem = validate_username(name)

    assert problem is not None
    assert "is not allowed" in problem


@pytest.mark.parametrize("email", ["a@example.com", "A.B+tag@sub.example.co", "x@xn--bcher-kva.example"])
def test_valid_emails(email: str) -> None:
    """Ordinary addresses pass."""
    assert validate_email(email) is None


@pytest.mark.parametrize(
    "email",
    [
        "",
        "no-at-sign",
        "@example.com",
        "a@",
        "a@localhost",
        "a b@example.com",
        "a@exa mple.com",
        "a..b@example.com",
        "a@example..com",
        "a,b@example.com",
        "<a@example.com>",
        "a@example.com\n",
        "a" * 65 + "@example.com",
    ],
)
def test_invalid_emails(email: str) -> None:
    """Malformed addresses are refused."""
    problem = validate_email(email)

    assert problem is not None
    assert "not a valid address" in problem


@pytest.mark.parametrize(
    ("name", "ok"),
    [("Alice Smith", True), ("Zoë", True), ("", False), ("   ", False), ("x" * 129, False), ("a\tb", False)],
)
def test_display_names(name: str, ok: bool) -> None:
    """Display names are 1-128 characters without control characters."""
    assert (validate_display_name(name) is None) is ok


@pytest.mark.parametrize(
    ("groups", "ok"),
    [
        ([], True),
        (["admins", "Dev.Team", "a_b-c"], True),
        (["-x"], False),
        (["a b"], False),
        ([""], False),
        (["dev\n"], False),
    ],
)
def test_groups(groups: list[str], ok: bool) -> None:
    """Group names are 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit."""
    assert (validate_groups(groups) is None) is ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("admins", ["admins"]),
        ("admins, dev ,ops", ["admins", "dev", "ops"]),
        ("dev,,dev, ,ops,dev", ["dev", "ops"]),
    ],
)
def test_parse_groups(text: str, expected: list[str]) -> None:
    """Comma-separated groups are trimmed, blanks and duplicates dropped, order kept."""
    assert parse_groups(text) == expected
