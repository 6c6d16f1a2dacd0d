"""Registry CSV import and export, card look-ups, on a real SQLite file."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.errors import RegistryImportError
from gated.registry import Person, Registry, parse_csv
from gated.storage import connect

HEADER = "person_id,name,id_number,unit,household,category,color,verified,card_uid"
WHEN = "2026-03-01T08:00:00Z"

# Line 1 is the header; P1 has two cards (lines 2, 3), P3 has none.
GOOD = f"""{HEADER}
P1,Zhang Wei,320623199001011234,1-101,H1,resident,green,false,0A1B2C3D4E
P1,Zhang Wei,320623199001011234,1-101,H1,resident,green,false,0a1b2c3d4f
P2,Li Na,320623198502022345,1-102,H2,resident,yellow,true, 11 22 33 44 55
P3,Wang Fang,,2-201,H3,visitor,blue,no,
"""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    path = tmp_path / "gated.db"
    conn = connect(path)
    yield path, conn
    conn.close()


@pytest.fixture
def registry(db: tuple[Path, sqlite3.Connection]) -> Registry:
    return Registry(db[1])


def load(registry: Registry, text: str, name: str = "people.csv") -> dict[str, int]:
    return registry.import_csv(io.StringIO(text), name, WHEN)


def snapshot(path: Path) -> tuple[list[Any], list[Any]]:
    """Every registry row as committed, read through a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        persons = conn.execute("SELECT * FROM persons ORDER BY id").fetchall()
        cards = conn.execute("SELECT * FROM cards ORDER BY uid").fetchall()
        return persons, cards
    finally:
        conn.close()


def export(registry: Registry) -> str:
    out = io.StringIO()
    registry.export_csv(out)
    return out.getvalue()


# --- a good file ----------------------------------------------------------------------------


def test_good_file_imports_persons_and_one_row_per_card(registry: Registry) -> None:
    assert load(registry, GOOD) == {"persons": 3, "cards": 3}
    assert registry.counts() == {"persons": 3, "cards": 3}

    assert registry.person("P1") == Person(
        "P1", "Zhang Wei", "320623199001011234", "1-101", "H1", "resident", "green", False, True
    )
    p2 = registry.person("P2")
    assert p2 is not None and p2.verified and p2.color == "yellow"
    p3 = registry.person("P3")
    assert p3 is not None and p3.id_number == "" and p3.category == "visitor"

    # Both of P1's cards open for P1; P3 has no card and is still registered.
    assert registry.card("0A1B2C3D4E").person == registry.person("P1")
    assert registry.card("0A1B2C3D4F").person == registry.person("P1")
    rows = registry.conn.execute("SELECT uid FROM cards WHERE person = 'P3'").fetchall()
    assert rows == []


def test_card_uids_are_stored_uppercase_without_spaces(registry: Registry) -> None:
    load(registry, GOOD)
    uids = [r[0] for r in registry.conn.execute("SELECT uid FROM cards ORDER BY uid")]
    assert uids == ["0A1B2C3D4E", "0A1B2C3D4F", "1122334455"]
    # What a reader reports in another spelling finds the same card.
    assert registry.card("0a1b2c3d4f").known
    assert registry.card(" 11 22 33 44 55 ").person == registry.person("P2")


def test_parse_csv_checks_without_writing(db: tuple[Path, sqlite3.Connection]) -> None:
    path, _ = db
    persons, cards = parse_csv(io.StringIO(GOOD), "people.csv")
    assert [p.id for p in persons] == ["P1", "P2", "P3"]
    assert cards == {"0A1B2C3D4E": "P1", "0A1B2C3D4F": "P1", "1122334455": "P2"}
    assert snapshot(path) == ([], [])


def test_bom_and_chinese_names(registry: Registry) -> None:
    text = (
        "\ufeff" + HEADER + "\n"
        "P1,张伟,320623199001011234,1栋101,H1,业主,green,true,0A1B2C3D4E\n"
        "P2,李娜,,1栋102,H2,租户,blue,false,\n"
    )
    assert load(registry, text) == {"persons": 2, "cards": 1}
    p1 = registry.person("P1")
    assert p1 is not None
    assert (p1.name, p1.unit, p1.category) == ("张伟", "1栋101", "业主")
    assert registry.card("0A1B2C3D4E").person == p1
    assert "张伟" in export(registry)


def test_windows_line_endings_and_quoted_fields(registry: Registry) -> None:
    text = (
        HEADER + "\r\n"
        'P1,"Zhang, Wei",320623199001011234,1-101,H1,resident,green,false,0A1B2C3D4E\r\n'
    )
    load(registry, text)
    p1 = registry.person("P1")
    assert p1 is not None and p1.name == "Zhang, Wei"


# --- bad files: named by line, nothing imported ---------------------------------------------

PRIOR = f"""{HEADER}
P1,Zhang Wei,320623199001011234,1-101,H1,resident,green,false,0A1B2C3D4E
P7,Zhao Lei,,5-501,H7,resident,red,false,7777777777
"""

# Good rows on lines 2 and 3 (one updates P1, one adds P8); the bad row is line 4, the last.
LEADING = (
    "P1,Zhang Wei,320623199001011234,9-909,H1,resident,blue,true,0A1B2C3D4E\n"
    "P8,Sun Li,,8-801,H8,resident,green,false,8888888888\n"
)
ROW = "P9,Qian Yu,,9-901,H9,resident,green,false,9999999999"


def with_field(field: str, value: str) -> str:
    values = dict(zip(HEADER.split(","), ROW.split(","), strict=True))
    values[field] = value
    return ",".join(values.values())


BAD_ROWS = {
    "bad person_id": (with_field("person_id", "P 9"), "person_id"),
    "empty person_id": (with_field("person_id", ""), "person_id"),
    "empty name": (with_field("name", "  "), "name"),
    "bad colour": (with_field("color", "dark green"), "color"),
    "bad verified flag": (with_field("verified", "maybe"), "verified"),
    "bad card_uid": (with_field("card_uid", "0A1B-2C3D"), "card_uid"),
    "uid of another person in the file": (with_field("card_uid", "88 88 88 88 88"), "8888888888"),
    "same person, other fields": (
        "P8,Sun Li,,8-802,H8,resident,green,false,8888888889",
        "P8",
    ),
    "too few fields": (",".join(ROW.split(",")[:8]), "number of fields"),
    "too many fields": (ROW + ",extra", "number of fields"),
}


@pytest.mark.parametrize("row, word", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_last_row_is_named_and_nothing_is_imported(
    db: tuple[Path, sqlite3.Connection], registry: Registry, row: str, word: str
) -> None:
    path, _ = db
    load(registry, PRIOR)
    before = snapshot(path)

    with pytest.raises(RegistryImportError) as err:
        load(registry, f"{HEADER}\n{LEADING}{row}\n", "people.csv")

    message = str(err.value)
    assert message.startswith("people.csv:4: "), message
    assert word in message
    assert snapshot(path) == before


def test_bad_row_in_the_middle_is_named_by_its_line(
    db: tuple[Path, sqlite3.Connection], registry: Registry
) -> None:
    path, _ = db
    load(registry, PRIOR)
    before = snapshot(path)
    text = f"{HEADER}\n{ROW}\n{with_field('color', 'Grün')}\n{LEADING}"
    with pytest.raises(RegistryImportError, match=r"^people\.csv:3: color"):
        load(registry, text)
    assert snapshot(path) == before


def test_a_multi_line_quoted_name_does_not_shift_later_line_numbers(registry: Registry) -> None:
    two_lines = 'P1,"Zhang\nWei",,1-101,H1,resident,green,false,'
    text = f"{HEADER}\n{two_lines}\n{with_field('verified', 'x')}\n"
    with pytest.raises(RegistryImportError, match=r"^people\.csv:4: verified"):
        load(registry, text)


@pytest.mark.parametrize(
    "header, word",
    [
        (HEADER.replace(",card_uid", ""), "missing column(s): card_uid"),
        (HEADER.replace("color", "colour"), "missing column(s): color"),
        (HEADER + ",email", "unknown column(s): email"),
        (HEADER + ",card_uid", "card_uid"),
    ],
    ids=["missing column", "misspelt column", "unknown column", "repeated column"],
)
def test_bad_header_is_line_1_and_nothing_is_imported(
    db: tuple[Path, sqlite3.Connection], registry: Registry, header: str, word: str
) -> None:
    path, _ = db
    load(registry, PRIOR)
    before = snapshot(path)
    with pytest.raises(RegistryImportError) as err:
        load(registry, f"{header}\n{ROW}\n")
    assert str(err.value).startswith("people.csv:1: ")
    assert word in str(err.value)
    assert snapshot(path) == before


def test_empty_file_is_an_error(registry: Registry) -> None:
    with pytest.raises(RegistryImportError, match=r"^people\.csv:1: missing column"):
        load(registry, "")


# --- card look-ups --------------------------------------------------------------------------


def test_card_lookup_unknown_revoked_inactive(registry: Registry) -> None:
    text = (
        f"{HEADER},active\n"
        "P1,Zhang Wei,,1-101,H1,resident,green,false,0A1B2C3D4E,true\n"
        "P4,Moved Out,,3-301,H4,resident,green,false,4444444444,false\n"
    )
    load(registry, text)

    unknown = registry.card("DEADBEEF00")
    assert unknown.person is None and not unknown.known and not unknown.revoked

    good = registry.card("0A1B2C3D4E")
    assert good.known and not good.revoked

    inactive = registry.card("4444444444")
    assert inactive.person is not None and inactive.person.id == "P4"
    assert not inactive.person.active and not inactive.known

    assert registry.revoke_card("0a1b2c3d4e", WHEN)
    revoked = registry.card("0A1B2C3D4E")
    assert revoked.revoked and revoked.person is not None and revoked.person.id == "P1"
    assert not registry.revoke_card("0A1B2C3D4E", WHEN), "already revoked"
    assert not registry.revoke_card("DEADBEEF00", WHEN), "not registered"


# --- export, re-import ----------------------------------------------------------------------


def test_export_then_import_round_trips(registry: Registry, tmp_path: Path) -> None:
    load(registry, GOOD)
    exported = export(registry)
    assert exported.splitlines()[0] == HEADER + ",active"
    assert len(exported.splitlines()) == 1 + 4  # P1 twice, P2, P3 without a card

    other = connect(tmp_path / "other.db")
    try:
        copy = Registry(other)
        assert copy.import_csv(io.StringIO(exported), "export.csv", WHEN) == {
            "persons": 3,
            "cards": 3,
        }
        assert export(copy) == exported
        for pid in ("P1", "P2", "P3"):
            assert copy.person(pid) == registry.person(pid)
    finally:
        other.close()


def test_export_leaves_out_revoked_cards_but_keeps_the_person(registry: Registry) -> None:
    load(registry, GOOD)
    registry.revoke_card("1122334455", WHEN)
    lines = export(registry).splitlines()
    assert not any("1122334455" in line for line in lines)
    assert "P2,Li Na,320623198502022345,1-102,H2,resident,yellow,true,,true" in lines


def test_reimport_updates_a_person_in_place(
    db: tuple[Path, sqlite3.Connection], registry: Registry
) -> None:
    load(registry, GOOD)
    update = f"{HEADER}\nP2,Li Na,320623198502022345,7-702,H7,resident,red,false,1122334455\n"
    assert load(registry, update) == {"persons": 1, "cards": 1}

    p2 = registry.person("P2")
    assert p2 is not None
    assert (p2.unit, p2.household, p2.color, p2.verified) == ("7-702", "H7", "red", False)
    assert registry.counts() == {"persons": 3, "cards": 3}, "updated, not duplicated"
    assert registry.card("1122334455").person == p2
    assert registry.person("P1") is not None and registry.card("0A1B2C3D4E").known


def test_reimport_can_move_a_card_to_another_person(registry: Registry) -> None:
    load(registry, GOOD)
    load(registry, f"{HEADER}\nP3,Wang Fang,,2-201,H3,visitor,blue,no,0A1B2C3D4F\n")
    found = registry.card("0A1B2C3D4F").person
    assert found is not None and found.id == "P3"
