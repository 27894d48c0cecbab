"""An import's file sent as multipart/form-data (what an HTML form, `curl -F file=@x.csv` and
most HTTP clients send), parsed as it streams: the `file` part's bytes go to the upload piece
by piece, never whole in memory; the small fields (`mapping`) are kept, and must come before
the file (clients send fields in the order given; the mapping decides how the header is read)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from domain.errors import invalid

FILE = "file"
FIELDS = frozenset({"mapping"})
FIELD_BYTES = 64 << 10


def boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data body; None for any other media type."""
    media, options = parse_options_header(content_type)
    if media != b"multipart/form-data":
        return None
    found = options.get(b"boundary")
    if not found:
        raise invalid("body", "multipart/form-data without a boundary")
    return found


@dataclass
class FormReader:
    """Feed it the body's pieces; the file's bytes go to `on_file`, `on_field(name, text)`
    is told each field before the file's first byte goes on."""

    boundary: bytes
    on_file: Callable[[bytes], None]
    on_field: Callable[[str, str], None]
    _parser: MultipartParser = field(init=False)
    _header: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""
    _part: str | None = None
    _files: int = 0
    _ended: bool = False

    def __post_init__(self) -> None:
        self._parser = MultipartParser(
            self.boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, piece: bytes) -> None:
        try:
            self._parser.write(piece)
        except MultipartParseError as e:
            raise invalid("body", f"malformed multipart/form-data: {e}") from None

    def finish(self) -> None:
        if not self._ended:
            raise invalid("body", "the multipart/form-data body ends before its last boundary")
        if not self._files:
            raise invalid(FILE, "no 'file' part: send the file as the form's 'file' field")

    def _begin(self) -> None:
        self._disposition, self._part = b"", None
        self._value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition += data[start:end]

    def _header_end(self) -> None:
        self._header.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if name == FILE:
            self._files += 1
            if self._files > 1:
                raise invalid(FILE, "one file per import: the form has two 'file' parts")
        elif name not in FIELDS:
            allowed = ", ".join(repr(n) for n in sorted({FILE, *FIELDS}))
            raise invalid(name or "body", f"not a field of an import's form (they are {allowed})")
        elif self._files:
            raise invalid(name, "the form's fields go before its file (they decide how it is read)")
        self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE:
            self.on_file(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > FIELD_BYTES:
            limit = f"a form field may have at most {FIELD_BYTES} bytes"
            raise invalid(self._part or "body", limit)

    def _part_end(self) -> None:
        if self._part is not None and self._part != FILE:
            try:
                text = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(self._part, "not UTF-8") from None
            self.on_field(self._part, text)

    def _end(self) -> None:
        self._ended = True
