"""The e-mail check's two paths, one answer: for generated addresses, the plain-ASCII path
(`domain.values.plain_email`) either steps aside or gives what email_validator's whole path
gives, so that `normalize_email` accepts and refuses exactly what the whole path does.

Addresses are built from the parts where the rules bite: dot-atoms with every atext
character, dots doubled or at the ends, quotes and spaces; domains with hyphens at label
edges, `xn--` and other `??--` labels, labels of 63 and 64 characters, numeric and one-letter
top-level domains, special-use names (`local`, `test`, `localhost`, …), upper case, non-ASCII
letters; lengths around 254. Hypothesis's own `emails()` adds the valid ones it knows.
"""

from __future__ import annotations

import email_validator
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from domain.values import checked_email, normalize_email, plain_email

ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
local_chars = st.sampled_from([*ATEXT, ".", '"', " ", "@", "é", "\\", ",", "(", ")"])
label_chars = st.sampled_from([*"abcXYZ09-", "é", "_", "ß"])
special = st.sampled_from([*email_validator.SPECIAL_USE_DOMAIN_NAMES, "example", "com", "io"])
labels = st.one_of(
    st.text(label_chars, min_size=1, max_size=8),
    st.sampled_from(["xn--", "ab--c", "a-", "-a", "1", "a", "com", "COM", "xn--bcher-kva", "q0"]),
    st.integers(61, 65).map(lambda n: "a" * n),
    special,
)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
locals_ = st.one_of(
    st.text(local_chars, min_size=0, max_size=12),
    st.integers(60, 70).map(lambda n: "x" * n),
)


def whole_way(address: str) -> str | None:
    try:
        return checked_email(address)
    except ValueError:
        return None


def either_way(address: str) -> str | None:
    try:
        return normalize_email(address)
    except ValueError:
        return None


def check(address: str) -> None:
    fast = plain_email(address)
    expected = whole_way(address)
    event("plain path" if fast is not None else "valid" if expected else "refused")
    if fast is not None:
        assert fast == expected, address  # the fast path never accepts what is refused
    assert either_way(address) == expected, address


@given(locals_, domains)
@settings(max_examples=3000, deadline=None)
@example("Ann.Lee+tag@Example.COM", "")
@example("a", "b.c")
@example("a", "x.localhost")
@example("a", "xn--abc.com")
@example("a", "ab--c.com")
@example("a" * 64, "b.com")
@example("a", ("b" * 63 + ".") * 3 + "c" * 61)  # 254 characters
@example("a", ("b" * 63 + ".") * 3 + "c" * 62)  # 255
def test_the_plain_path_agrees_with_the_whole_path(local: str, domain: str) -> None:
    check(f"{local}@{domain}" if domain else local)


@given(st.emails())
@settings(max_examples=1000, deadline=None)
def test_valid_addresses_agree(address: str) -> None:
    check(address)
    check(address.upper())


@given(st.text(st.characters(codec="ascii"), max_size=40))
@settings(max_examples=1000, deadline=None)
def test_any_ascii_text_agrees(text: str) -> None:
    check(text)
