"""Recovery codes: format and entropy, normalisation, peppered hashes, matching."""

from __future__ import annotations

import math
import re

import pytest

from gateway.factors import recovery

PEPPER = b"p" * 32


def test_default_set_has_ten_distinct_codes() -> None:
    """generate_codes() gives ten different codes."""
    codes = recovery.generate_codes()
    assert len(codes) == recovery.DEFAULT_COUNT == 10
    assert len(set(codes)) == 10


@pytest.mark.parametrize("count", [1, 4, 32])
def test_count_is_honoured(count: int) -> None:
    """Any positive count is produced exactly."""
    assert len(recovery.generate_codes(count)) == count


def test_count_must_be_positive() -> None:
    """Zero codes is a programming error."""
    with pytest.raises(ValueError):
        recovery.generate_codes(0)


def test_codes_are_grouped_and_unambiguous() -> None:
    """Codes look like xxxx-xxxx-xxxx and never contain i, l, o or u."""
    for code in recovery.generate_codes(32):
        assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}", code)


def test_codes_carry_at_least_60_bits() -> None:
    """12 characters from a 32-character alphabet are 60 bits."""
    assert len(set(recovery.ALPHABET)) == 32
    assert recovery.CODE_LENGTH * math.log2(len(recovery.ALPHABET)) >= 60


def test_codes_use_the_whole_alphabet() -> None:
    """Every alphabet character shows up across many codes (the generator is not biased to a subset)."""
    seen = set("".join(recovery.generate_codes(200)).replace("-", ""))
    assert seen == set(recovery.ALPHABET)


@pytest.mark.parametrize(
    "typed",
    [
        "abcd-efgh-jk01",
        "ABCD-EFGH-JK01",
        "abcd efgh jk01",
        "abcdefghjk01",
        " abcd-efgh-jkO1 ",
        "abcd-efgh-jkol",
    ],
)
def test_normalisation(typed: str) -> None:
    """Case, dashes, spaces and O/I/L typed for 0/1 do not matter."""
    assert recovery.normalise_code(typed) == "abcdefghjk01"


@pytest.mark.parametrize(
    "typed", ["", "abcd-efgh-jk0", "abcd-efgh-jk012", "abcd-efgh-jku1", "abcd_efgh_jk01"]
)
def test_malformed_codes_do_not_normalise(typed: str) -> None:
    """Wrong length or characters outside the alphabet are not codes."""
    assert recovery.normalise_code(typed) is None


def test_hash_is_keyed_and_hides_the_code() -> None:
    """The hash depends on the pepper and does not contain the code."""
    code = recovery.generate_codes(1)[0]
    stored = recovery.hash_code(code, pepper=PEPPER)
    assert code not in stored and code.replace("-", "") not in stored
    assert stored != recovery.hash_code(code, pepper=b"q" * 32)
    assert stored == recovery.hash_code(code.upper().replace("-", " "), pepper=PEPPER)


def test_hash_refuses_non_codes() -> None:
    """Hashing something that is not a code is a programming error."""
    with pytest.raises(ValueError):
        recovery.hash_code("hello", pepper=PEPPER)


def test_short_pepper_is_refused() -> None:
    """A pepper shorter than 16 bytes is refused."""
    with pytest.raises(ValueError):
        recovery.hash_code("abcd-efgh-jk01", pepper=b"short")


def test_match_returns_the_index() -> None:
    """Each code of a set matches its own hash and no other."""
    codes = recovery.generate_codes(10)
    hashes = [recovery.hash_code(code, pepper=PEPPER) for code in codes]
    for index, code in enumerate(codes):
        assert recovery.match_code(code, hashes, pepper=PEPPER) == index
        assert recovery.match_code(code.upper(), hashes, pepper=PEPPER) == index


@pytest.mark.parametrize("typed", ["", "nope", "abcd-efgh-jk01", "١٢٣٤-٥٦٧٨-٩٠١٢"])
def test_unknown_or_malformed_codes_do_not_match(typed: str) -> None:
    """Codes outside the set, and input that is not a code, match nothing."""
    hashes = [recovery.hash_code(code, pepper=PEPPER) for code in recovery.generate_codes(10)]
    assert recovery.match_code(typed, hashes, pepper=PEPPER) is None


def test_wrong_pepper_does_not_match() -> None:
    """A code checked with another pepper does not match."""
    code = recovery.generate_codes(1)[0]
    hashes = [recovery.hash_code(code, pepper=PEPPER)]
    assert recovery.match_code(code, hashes, pepper=b"q" * 32) is None


def test_match_against_empty_list() -> None:
    """No codes left means nothing matches."""
    assert recovery.match_code("abcd-efgh-jk01", [], pepper=PEPPER) is None
