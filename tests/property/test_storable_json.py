"""The once-per-body storability check says exactly what the per-field one says, for any
text JSON can carry (escaped as clients may send it), and names the refused field."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from domain.values import _storable, storable_json, unstorable_field

# Any code point, lone surrogates and NUL included, with backslashes and "u" to confuse escapes.
texts = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(["\\", "u", "\x00"])))
documents = st.recursive(
    texts, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3)
)


@given(documents)
def test_the_body_check_agrees_with_the_field_check(document: object) -> None:
    raw = json.dumps(document, ensure_ascii=True).encode()
    assert storable_json(raw) == _storable(document)
    if not storable_json(raw):
        assert unstorable_field(json.loads(raw)) is not None


def test_the_refused_field_is_named() -> None:
    raw = b'{"events": [{"data": {"url": "ok"}}, {"data": {"url": "bad\\u0000"}}]}'
    assert not storable_json(raw)
    assert unstorable_field(json.loads(raw)) == "events.1.data.url"
