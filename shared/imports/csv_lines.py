"""Reading an import CSV: the header, then one ``ParsedLine`` per physical line, each either
valid (a ``RestockLine``'s fields) or carrying the reason it is rejected. Pure functions of
the text; unknown SKUs and locations are found later, in SQL (``shared.imports.runner``).

A record is one physical line (quoted fields cannot span lines), so the line numbers in the
errors are the file's, the header being line 1."""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from shared.errors import DomainError
from shared.inventory.schemas import RestockLine

COLUMNS = ("sku", "quantity", "location_code", "reference", "note")
REQUIRED_COLUMNS = ("sku", "quantity")
_DIGITS = re.compile(r"[0-9]{1,9}")
_SHOWN_SKU_CHARS = 64


class InvalidImport(DomainError):
    """The upload cannot be an import at all (its header, its encoding, its media type)."""

    status = 422
    type_slug = "invalid-import"
    title = "The CSV cannot be imported"


def read_header(first_line: str) -> list[str]:
    """The column names of the header line, checked: ``sku`` and ``quantity`` required,
    ``location_code``, ``reference`` and ``note`` optional, none twice, no other."""
    try:
        names = [name.strip() for name in next(csv.reader([first_line], strict=True))]
    except (csv.Error, StopIteration):
        raise InvalidImport("the header line is not valid CSV") from None
    problems = [
        f"column {n!r} is not one of {', '.join(COLUMNS)}" for n in names if n not in COLUMNS
    ]
    problems += [f"column {n!r} appears twice" for n in COLUMNS if names.count(n) > 1]
    problems += [f"column {n!r} is missing" for n in REQUIRED_COLUMNS if n not in names]
    if problems:
        raise InvalidImport(
            "the header line must name the columns: " + "; ".join(problems),
            errors=[{"loc": ["body", 1], "msg": p, "type": "invalid-header"} for p in problems],
        )
    return names


# line, sku, location_code, quantity, reference, note, reason: ``import_lines``'s columns
LineRecord = tuple[int, str | None, str | None, int | None, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line: int
    sku: str | None
    location_code: str | None
    quantity: int | None
    reference: str | None
    note: str | None
    reason: str | None  # why the line is rejected; None when it is valid so far

    def as_record(
        self,
    ) -> tuple[int, str | None, str | None, int | None, str | None, str | None, str | None]:
        return (
            self.line,
            self.sku,
            self.location_code,
            self.quantity,
            self.reference,
            self.note,
            self.reason,
        )


def _rejected(line: int, sku: str | None, reason: str) -> ParsedLine:
    shown = sku.replace("\x00", "")[:_SHOWN_SKU_CHARS] if sku else None
    return ParsedLine(line, shown, None, None, None, None, reason)


def parse_line(number: int, text: str, header: Sequence[str]) -> ParsedLine:
    """One data line against the header."""
    if "\x00" in text:
        return _rejected(number, None, "the line contains a NUL character")
    if "\ufffd" in text:
        return _rejected(number, None, "the line is not valid UTF-8")
    try:
        fields = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return _rejected(number, None, "the line is not valid CSV (an unterminated quote?)")
    values = dict(zip(header, (f.strip() for f in fields), strict=False))
    sku = values.get("sku") or None
    if [f.strip() for f in fields] == list(header):
        return _rejected(number, None, "a second header line")
    if len(fields) != len(header):
        return _rejected(
            number, sku, f"expected {len(header)} fields ({','.join(header)}), found {len(fields)}"
        )
    quantity = values["quantity"]
    if not _DIGITS.fullmatch(quantity):
        return _rejected(number, sku, f"quantity {quantity[:20]!r} is not a whole number")
    try:
        valid = RestockLine.model_validate(
            {
                "sku": values["sku"],
                "quantity": int(quantity),
                "location_code": values.get("location_code") or "MAIN",
                "reference": values.get("reference") or None,
                "note": values.get("note") or None,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return _rejected(number, sku, f"{field}: {first['msg']}")
    return ParsedLine(
        number, valid.sku, valid.location_code, valid.quantity, valid.reference, valid.note, None
    )


@dataclass(slots=True)
class ReadProgress:
    """How far the reader is through the upload, for progress reports."""

    bytes_read: int = 0
    lines: int = 0


async def parse_upload(
    chunks: AsyncIterable[bytes], progress: ReadProgress
) -> AsyncIterator[ParsedLine]:
    """Every data line of the upload, in order, decoded as UTF-8 (a BOM is skipped), in
    bounded memory: a chunk at a time. Blank lines are skipped (their numbers still count).
    Raises ``InvalidImport`` for a bad header."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    header: list[str] | None = None
    number = 0
    carry = ""
    async for chunk in chunks:
        progress.bytes_read += len(chunk)
        lines = (carry + decoder.decode(chunk)).split("\n")
        carry = lines.pop()
        for text in lines:
            number += 1
            header, parsed = _next_line(number, text, header)
            if parsed is not None:
                progress.lines += 1
                yield parsed
    tail = carry + decoder.decode(b"", final=True)
    if tail:
        number += 1
        header, parsed = _next_line(number, tail, header)
        if parsed is not None:
            progress.lines += 1
            yield parsed
    if header is None:
        raise InvalidImport("the upload is empty: a header line (sku,quantity,...) is required")


def _next_line(
    number: int, text: str, header: list[str] | None
) -> tuple[list[str] | None, ParsedLine | None]:
    text = text.removesuffix("\r")
    if header is None:
        return read_header(text), None
    if not text.strip():
        return header, None
    return header, parse_line(number, text, header)
