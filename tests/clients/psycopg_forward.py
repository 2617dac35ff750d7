"""psycopg 3 through a forwarding Sluice session: pipeline mode, COPY, server-side
prepared statements, named (server-side) cursors, transactions, binary results.
Usage: psycopg_forward.py <conninfo>. Prints OK lines; exits non-zero on failure."""

import asyncio
import sys

import psycopg

conninfo = sys.argv[1]
with psycopg.connect(conninfo, autocommit=True) as conn:
    user = conn.execute("SELECT current_user").fetchone()[0]
    assert user == "IAM:bob", user
    print("OK identity", user)

    conn.execute("CREATE TEMP TABLE items (id int PRIMARY KEY, name text, price numeric)")
    with conn.cursor() as cur:
        with cur.copy("COPY items (id, name, price) FROM STDIN") as copy:
            for i in range(1, 2001):
                copy.write_row((i, f"item {i}", i * 0.25))
    assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 2000
    print("OK copy in")

    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, name FROM items WHERE id <= 3 ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
    assert rows == [("1", "item 1"), ("2", "item 2"), ("3", "item 3")], rows
    print("OK copy out")

    # Pipeline mode: many statements, one round trip per sync.
    with conn.pipeline():
        cursors = [conn.execute("SELECT name FROM items WHERE id = %s", (i,)) for i in range(1, 51)]
    names = [c.fetchone()[0] for c in cursors]
    assert names == [f"item {i}" for i in range(1, 51)], names[:3]
    print("OK pipeline")

    # Server-side prepared statements (prepare=True) reused, binary results.
    for i in (5, 6, 7):
        row = conn.execute("SELECT id, price FROM items WHERE id = %s", (i,), prepare=True, binary=True).fetchone()
        assert row[0] == i and float(row[1]) == i * 0.25, row
    print("OK prepared binary")

    # Transactions and a named cursor fetched in batches.
    with conn.transaction():
        conn.execute("UPDATE items SET price = 0 WHERE id = 1")
        with conn.cursor(name="big") as cur:
            cur.itersize = 300
            cur.execute("SELECT id FROM items ORDER BY id")
            ids = [r[0] for r in cur]
    assert ids == list(range(1, 2001))
    assert conn.execute("SELECT price FROM items WHERE id = 1").fetchone()[0] == 0
    print("OK transaction named cursor")

    try:
        with conn.transaction():
            conn.execute("UPDATE items SET price = 99 WHERE id = 2")
            conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero:
        pass
    assert float(conn.execute("SELECT price FROM items WHERE id = 2").fetchone()[0]) == 0.5
    print("OK rollback on error")

    # An upstream error inside a pipeline voids the rest (lake statements included)
    # up to the Sync, and the connection stays usable.
    try:
        with conn.pipeline():
            conn.execute("SELECT 1/0")
            conn.execute("SELECT count(*) FROM nyc.vendors")
            conn.execute("SELECT 1")
        raise AssertionError("the pipeline should have failed")
    except psycopg.errors.DivisionByZero:
        pass
    assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
    assert conn.execute("SELECT count(*) > 0 FROM nyc.vendors").fetchone()[0] is True
    print("OK pipeline error")

    # A lake statement failing in a pipeline rolls back the upstream statements that
    # ran before it in the same implicit transaction (up to the Sync), as PostgreSQL
    # does with any failing statement.
    try:
        with conn.pipeline():
            conn.execute("INSERT INTO items VALUES (9001, 'ghost', 1)")
            conn.execute("SELECT * FROM nyc.no_such_table")
        raise AssertionError("the pipeline should have failed")
    except psycopg.errors.UndefinedTable:
        pass
    assert conn.execute("SELECT count(*) FROM items WHERE id = 9001").fetchone()[0] == 0
    # …while the same pipeline without the failure commits.
    with conn.pipeline():
        conn.execute("INSERT INTO items VALUES (9002, 'kept', 1)")
        conn.execute("SELECT count(*) FROM nyc.vendors")
    assert conn.execute("SELECT count(*) FROM items WHERE id = 9002").fetchone()[0] == 1
    print("OK pipeline lake error rolls back")

# What a write role's forwarding session reports: not read-only (libpq's
# target_session_attrs=read-write must accept it), and the client_encoding the
# upstream applies.
with psycopg.connect(conninfo, autocommit=True, target_session_attrs="read-write") as rw:
    assert rw.info.parameter_status("default_transaction_read_only") == "off"
    assert rw.execute("SELECT 1").fetchone()[0] == 1
with psycopg.connect(conninfo, autocommit=True, client_encoding="LATIN9") as latin:
    assert latin.info.parameter_status("client_encoding") == "LATIN9"
    # Text in that encoding reaches the upstream as the client wrote it.
    assert latin.execute("SELECT %s::text", ("prix 5€",)).fetchone()[0] == "prix 5€"
    assert latin.execute("SELECT 'café ' || '€'").fetchone()[0] == "café €"
    latin.execute("SET client_encoding TO UTF8")
print("OK settings and encodings")

# An error inside a transaction inside a pipeline, async client: the error reaches
# the client as soon as it asks (Flush), without a Sync; also for an error Sluice
# itself raises. A hang fails the test through the timeout.
async def pipeline_errors():
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as aconn:
        for failing, error in (
            ("SELECT 1 / %s", psycopg.errors.DivisionByZero),
            ("SHOW sluice.no_such_setting", psycopg.errors.UndefinedObject),
        ):
            try:
                async with aconn.pipeline():
                    async with aconn.transaction():
                        cur = await aconn.execute(failing, (0,) if "%s" in failing else None)
                        await cur.fetchone()
                raise AssertionError("the pipeline should have failed")
            except error:
                pass
            cur = await aconn.execute("SELECT 1")
            assert (await cur.fetchone())[0] == 1


asyncio.run(asyncio.wait_for(pipeline_errors(), 20))
print("OK async pipeline errors are not held back")
