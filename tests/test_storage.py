"""gated.storage: the transactions every writer goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from gated.storage import Transaction, connect


def test_a_transaction_inside_one_is_a_savepoint_that_fails_alone(tmp_path: Path) -> None:
    conn = connect(tmp_path / "gated.db")
    conn.execute("CREATE TABLE t (x INTEGER)")
    with Transaction(conn) as c:
        c.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError), Transaction(conn) as inner:
            inner.execute("INSERT INTO t VALUES (2)")
            raise ValueError("a step fails")
        with Transaction(conn) as inner:
            inner.execute("INSERT INTO t VALUES (3)")
        assert conn.in_transaction  # the inner ones did not commit the outer
    assert [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")] == [1, 3]
    conn.close()
