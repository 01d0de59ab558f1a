"""Which page of an SQLite file holds which rows of a table: read from the file's b-tree as
https://www.sqlite.org/fileformat2.html lays it out (section 1.6, "B-tree Pages": a page's
header, its cell pointer array, an interior table cell's 4-byte left child and a leaf table
cell's payload size and rowid as varints, page 1's header after the 100-byte file header),
so that a test can write over the very pages a bad block or a file written over would hit."""

from pathlib import Path

_INTERIOR_TABLE, _LEAF_TABLE = 0x05, 0x0D


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, offset past it) of SQLite's varint at `at` (1-9 bytes, big-endian)."""
    value = 0
    for n in range(9):
        byte = data[at + n]
        if n == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + n + 1
    raise AssertionError("unreachable")


def table_leaves(path: Path, root: int, page_size: int) -> list[tuple[int, list[int]]]:
    """(page number, rowids on it) of each leaf of the table whose root page is `root`, in
    rowid order."""
    data = Path(path).read_bytes()
    leaves: list[tuple[int, list[int]]] = []

    def walk(number: int) -> None:
        page = data[(number - 1) * page_size:number * page_size]
        head = 100 if number == 1 else 0
        kind, cells = page[head], int.from_bytes(page[head + 3:head + 5], "big")
        pointers_at = head + (12 if kind == _INTERIOR_TABLE else 8)
        pointers = [int.from_bytes(page[pointers_at + 2 * n:pointers_at + 2 * n + 2], "big")
                    for n in range(cells)]
        if kind == _LEAF_TABLE:
            leaves.append((number, [_varint(page, _varint(page, p)[1])[0] for p in pointers]))
            return
        assert kind == _INTERIOR_TABLE, f"page {number}: not a table b-tree page ({kind})"
        for pointer in pointers:
            walk(int.from_bytes(page[pointer:pointer + 4], "big"))
        walk(int.from_bytes(page[head + 8:head + 12], "big"))  # the right-most child

    walk(root)
    return leaves
