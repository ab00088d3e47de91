"""The report renderer, run as a child process of the worker (``python -m
shared.reports.render convert|chart``) so that formatting and drawing never hold the worker's
event loop: its lease renewals, heartbeats and cancellations go on while a report renders, and
cancelling a report kills the child.

``convert``: stdin is one JSON line (the header: format, columns, the document's fields), the
rows as PostgreSQL's CSV with a header row, a NUL, and the totals as JSON; stdout is the JSON
or XLSX file, written as the rows arrive (constant memory). Exit status 3 with a one-line reason
on stderr: the rows do not fit the format.

``chart``: a long-lived chart server (see ``serve_charts``): JSON documents (kind, params,
totals, top rows) in, PNGs out, until stdin closes.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from shared.reports.xlsx import TooManyRows, Workbook

EXIT_DOES_NOT_FIT = 3
OUTPUT_BUFFER = 1 << 20


class _Input:
    """The CSV rows, then (after a NUL) the trailer: the totals, known only once the rows have
    gone by."""

    def __init__(self, text: IO[str]) -> None:
        self._text = text
        self._trailer: str | None = None

    def _lines(self) -> Iterator[str]:
        for line in self._text:
            if line.startswith("\x00"):
                self._trailer = line[1:] + self._text.read()
                return
            yield line

    def rows(self) -> Iterator[list[str]]:
        reader = csv.reader(self._lines())
        next(reader, None)  # the header row
        return reader

    def trailer(self) -> dict[str, Any]:
        if self._trailer is None:
            raise ValueError("the input ended without its totals")
        result: dict[str, Any] = json.loads(self._trailer)
        return result


def _json_value(kind: str) -> Callable[[str], str]:
    base = kind.rstrip("?")
    if base in ("str", "text"):
        if kind.endswith("?"):
            return lambda v: json.dumps(v) if v else "null"
        return json.dumps
    if base == "int":
        return lambda v: v if v else "null"
    # money and dates are strings: exact decimals, ISO dates
    return lambda v: f'"{v}"' if v else "null"


# OWASP, CSV injection: a cell a spreadsheet would read as a formula (or whose leading tab or
# CR it would strip before reading one) gets a leading single quote, so it shows as text.
_FORMULA_STARTS = "'=', '+', '-', '@', E'\\t', E'\\r'"
_TEXT_KINDS = ("str", "text")


def spreadsheet_safe_sql(sql: str, columns: Sequence[tuple[str, str]]) -> str:
    """``sql`` (the rows of a CSV report) with its text columns neutralised as OWASP
    recommends; numbers and dates stay as they are, so a negative number is still a number.
    Done in the COPY's own statement: PostgreSQL's CSV output stays the file, untouched."""
    cells = []
    for name, kind in columns:
        column = f'q."{name}"'
        if kind.rstrip("?") in _TEXT_KINDS:
            column = (
                f"CASE WHEN left({column}, 1) IN ({_FORMULA_STARTS})"
                f" THEN '''' || {column} ELSE {column} END AS \"{name}\""
            )
        cells.append(column)
    return f"SELECT {', '.join(cells)} FROM ({sql}) AS q"  # noqa: S608


def write_json(header: dict[str, Any], source: _Input, out: IO[bytes]) -> int:
    """``{kind, generated_at, params, rows: [...], totals: {...}}``, one row per line."""
    columns: list[list[str]] = header["columns"]
    keys = [json.dumps(name) + ":" for name, _ in columns]
    values = [_json_value(kind) for _, kind in columns]
    document = header["document"]
    head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in document.items())
    out.write(f'{{{head}, "rows": [\n'.encode())
    count = 0
    lines: list[str] = []
    separator = ""
    for row in source.rows():
        pieces = [k + f(v) for k, f, v in zip(keys, values, row, strict=False)]
        lines.append("{" + ", ".join(pieces) + "}")
        count += 1
        if len(lines) >= 2048:
            out.write((separator + ",\n".join(lines)).encode())
            separator = ",\n"
            lines.clear()
    if lines:
        out.write((separator + ",\n".join(lines)).encode())
    totals = source.trailer()["totals"]
    out.write(f'\n], "totals": {json.dumps(totals)}}}\n'.encode())
    return count


def write_xlsx(header: dict[str, Any], source: _Input, out: IO[bytes]) -> int:
    columns: list[list[str]] = header["columns"]
    names = header["sheet_names"]
    book = Workbook(out, names)
    count = book.write_table(
        [name for name, _ in columns], [kind for _, kind in columns], source.rows()
    )
    trailer = source.trailer()
    totals_rows = [[(cell[0], cell[1]) for cell in row] for row in trailer["totals_sheet"]]
    book.write_cells(totals_rows, trailer["totals_columns"])
    book.close()
    return count


def convert(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    gc.disable()  # millions of short-lived rows, no cycles: the collector only costs time
    text = io.TextIOWrapper(stdin, encoding="utf-8", newline="")
    header = json.loads(text.readline())
    source = _Input(text)
    if header["format"] == "json":
        write_json(header, source, stdout)
    else:
        write_xlsx(header, source, stdout)
    stdout.flush()
    return 0


def serve_charts(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """Draw charts until stdin closes: each request an 8-byte length and a JSON document, each
    answer a status byte (0: a PNG follows, 1: an error message), an 8-byte length and the
    bytes."""
    from shared.reports.charts import render_chart

    while head := stdin.read(8):
        document = json.loads(stdin.read(int.from_bytes(head, "big")))
        try:
            status, body = 0, render_chart(document)
        except Exception as exc:
            status, body = 1, f"{type(exc).__name__}: {exc}".encode()
        stdout.write(bytes([status]) + len(body).to_bytes(8, "big") + body)
        stdout.flush()
    return 0


def main(argv: Sequence[str]) -> int:
    mode = argv[1] if len(argv) > 1 else ""
    out = open(sys.stdout.fileno(), "wb", buffering=OUTPUT_BUFFER, closefd=False)  # noqa: SIM115
    try:
        if mode == "convert":
            return convert(sys.stdin.buffer, out)
        if mode == "chart":
            return serve_charts(sys.stdin.buffer, out)
        print(
            f"usage: python -m shared.reports.render convert|chart (got {mode!r})", file=sys.stderr
        )
        return 2
    except TooManyRows as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    finally:
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
