"""odecli's console: rich on a terminal, never hard-wrapped anywhere else (pipes, files, job logs)."""

from __future__ import annotations

import io

from rich.table import Table

from odecli.console import PipeFriendlyConsole

MESSAGE = "error: " + "a sentence that goes on and on " * 8 + "/a/long/path/ending/in/t10k-images-idx3-ubyte.gz"
DESCRIPTION = "Dormand-Prince 5(4), adaptive, FSAL, 4th-order dense output; " * 3


def _table() -> Table:
    table = Table("name", "description")
    table.add_row("dopri5", DESCRIPTION)
    return table


def _lines(console: PipeFriendlyConsole) -> list[str]:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().splitlines()


def test_on_a_terminal_it_wraps_as_rich_does() -> None:
    terminal = PipeFriendlyConsole(file=io.StringIO(), force_terminal=True, color_system=None, width=60, _environ={})
    terminal.print(MESSAGE)
    terminal.print(_table())
    lines = _lines(terminal)
    assert len(lines) > 4 and max(len(line) for line in lines) <= 60


def test_off_a_terminal_a_message_is_one_line_and_a_table_as_wide_as_its_content() -> None:
    log = PipeFriendlyConsole(file=io.StringIO(), _environ={})
    log.print(MESSAGE)
    log.print(_table())
    lines = _lines(log)
    assert lines[0] == MESSAGE
    assert any(DESCRIPTION in line for line in lines)  # the cell was not wrapped
    assert not log.has_a_screen_width


def test_off_a_terminal_columns_sizes_tables_but_never_wraps_a_message() -> None:
    log = PipeFriendlyConsole(file=io.StringIO(), _environ={"COLUMNS": "50"})
    log.print(MESSAGE)
    log.print(_table())
    message, *table = _lines(log)
    assert message == MESSAGE
    assert max(len(line) for line in table) <= 50 and log.has_a_screen_width
