"""asyncpg against Sluice over verified TLS, with asyncpg's default settings (its
startup packet sends client_encoding 'utf-8', quotes included). Exits non-zero with a
message on the first wrong answer.

Usage: python3 asyncpg_check.py MODE HOST PORT USER PASSWORD DATABASE CAFILE

MODE:
  features     binary parameters and results, prepared statements, type
               introspection, cursors (MOVE included), timeouts, simple-protocol
               errors, direct TLS
  connections  1000 TLS connections, at most 50 connecting at once, none lost
  errors       errors raised at Parse, which asyncpg sends with Describe and Flush
               and no Sync (PostgreSQL answers at once)

The certificate is checked against CAFILE and the host name (verify-full)."""

import asyncio
import datetime
import decimal
import json
import ssl
import sys
import time

import asyncpg


def check(label, got, want):
    if got != want:
        print(f"FAIL {label}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {label}")


def report(name, value):
    """A `RESULT name json` line: the values the Rust test asserts on."""
    print(f"RESULT {name} {json.dumps(value, default=str)}")


def fail(label, got, want):
    print(f"FAIL {label}: got {got}, want {want}")
    sys.exit(1)


def types(attrs):
    return [(a.name, a.type.name) for a in attrs]


class Introspecting(asyncpg.Connection):
    """Records the type OIDs asyncpg had to look up in the server's catalog."""

    introspected = []

    async def _introspect_types(self, typeoids, timeout):
        Introspecting.introspected.append(sorted(typeoids))
        return await super()._introspect_types(typeoids, timeout)


class Target:
    def __init__(self, argv):
        self.host, port, self.user, self.password, self.database, self.cafile = argv
        self.port = int(port)

    def ssl(self, alpn=False):
        # Verifies the chain against the test CA and the host name.
        ctx = ssl.create_default_context(cafile=self.cafile)
        if alpn:
            ctx.set_alpn_protocols(["postgresql"])
        return ctx

    async def connect(self, **kw):
        kw.setdefault("ssl", self.ssl())
        return await asyncpg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            **kw,
        )


async def basics(conn):
    check("tls", conn._transport.get_extra_info("ssl_object") is not None, True)
    # asyncpg asked for 'utf-8' (quoted); the server must settle on UTF8.
    check("client_encoding reported", conn.get_settings().client_encoding, "UTF8")
    check("fetchval", await conn.fetchval("SELECT 1"), 1)
    check("server_version", conn.get_server_version().major >= 9, True)
    check("count trips", await conn.fetchval("SELECT count(*) FROM nyc.trips"), 1200000)
    rows = await conn.fetch("SELECT borough, count(*) AS n FROM nyc.zones GROUP BY borough ORDER BY borough")
    check(
        "fetch rows",
        [(r["borough"], r["n"]) for r in rows],
        [("Bronx", 44), ("Brooklyn", 45), ("EWR", 44), ("Manhattan", 44), ("Queens", 44), ("Staten Island", 44)],
    )
    row = await conn.fetchrow("SELECT vendor_id, name, active FROM nyc.vendors WHERE vendor_id = 2")
    report("basics", {
        "client_encoding": conn.get_settings().client_encoding,
        "boroughs": [[r["borough"], r["n"]] for r in rows],
        "vendor_2": list(row.values()),
    })
    check("fetchrow ndjson", (row["vendor_id"], row["name"], row["active"]), (2, "VeriFone Inc.", True))


async def parameters(conn):
    # Parameters of several types in, the same values back (binary both ways).
    ts = datetime.datetime(2024, 5, 6, 7, 8, 9, 250000)
    day = datetime.date(2024, 5, 6)
    row = await conn.fetchrow(
        "SELECT $1::int AS i, $2::text AS t, $3::float8 AS f, $4::timestamp AS ts, $5::bool AS b, "
        "$6::date AS d, $7::numeric(10,2) AS n, $8::bigint AS big",
        41, "héllo", 1.5, ts, False, day, decimal.Decimal("12.34"), 2**40,
    )
    check("param echo int", row["i"], 41)
    check("param echo text", row["t"], "héllo")
    check("param echo float", row["f"], 1.5)
    check("param echo timestamp", row["ts"], ts)
    check("param echo bool", row["b"], False)
    check("param echo date", row["d"], day)
    check("param echo numeric(10,2)", (row["n"], str(row["n"])), (decimal.Decimal("12.34"), "12.34"))
    check("param echo bigint", row["big"], 2**40)
    # Unconstrained numeric: value equality (Sluice widens the scale, see report).
    check("param numeric arithmetic", await conn.fetchval("SELECT $1::numeric + 1", decimal.Decimal("12.34")), decimal.Decimal("13.34"))
    check("param expression int", await conn.fetchval("SELECT $1::int + 1", 41), 42)
    check("param expression text", await conn.fetchval("SELECT $1::text || 'x'", "a"), "ax")
    check("param NULL", await conn.fetchval("SELECT $1::text IS NULL", None), True)

    # Parameters whose types the server infers from lake columns.
    check(
        "param infer text+int",
        await conn.fetchval("SELECT count(*) FROM nyc.trips WHERE month = $1 AND passenger_count > $2", "2024-02", 0),
        100000,
    )
    check(
        "param infer timestamp",
        await conn.fetchval(
            "SELECT count(*) FROM nyc.trips WHERE pickup_datetime >= $1 AND pickup_datetime < $2",
            datetime.datetime(2024, 3, 1), datetime.datetime(2024, 4, 1),
        ),
        100000,
    )
    check(
        "param date",
        await conn.fetchval("SELECT count(*) FROM nyc.trips WHERE CAST(pickup_datetime AS DATE) = $1", datetime.date(2024, 3, 5)),
        3188,
    )
    check("param infer bigint", await conn.fetchval("SELECT zone FROM nyc.zones WHERE location_id = $1", 12), "Manhattan Zone 12")
    check("param bool", await conn.fetchval("SELECT count(*) FROM nyc.vendors WHERE active = $1", True), 2)
    check(
        "param float",
        await conn.fetchval("SELECT count(*) FROM nyc.trips WHERE month = '2024-01' AND fare_amount > $1", 1e9),
        0,
    )
    check(
        "param array",
        [r[0] for r in await conn.fetch("SELECT location_id FROM nyc.zones WHERE location_id = ANY($1::bigint[]) ORDER BY 1", [7, 3, 5])],
        [3, 5, 7],
    )


async def binary_results(conn):
    stmt = await conn.prepare(
        "SELECT CAST(7 AS BIGINT) AS i8, CAST(3 AS SMALLINT) AS i2, CAST(5 AS INTEGER) AS i4, "
        "CAST(1.25 AS DOUBLE PRECISION) AS f8, CAST(4 AS REAL) AS f4, 'txt' AS t, true AS b, "
        "DATE '2024-05-06' AS d, TIMESTAMP '2024-05-06 07:08:09.25' AS ts, "
        "CAST(12.34 AS DECIMAL(10,2)) AS n, CAST(-0.5 AS DECIMAL(6,3)) AS nn, "
        "CAST(NULL AS TEXT) AS nul, CAST('x' AS BYTEA) AS by, INTERVAL '1 day' AS iv"
    )
    check(
        "binary attribute types",
        types(stmt.get_attributes()),
        [("i8", "int8"), ("i2", "int2"), ("i4", "int4"), ("f8", "float8"), ("f4", "float4"), ("t", "text"),
         ("b", "bool"), ("d", "date"), ("ts", "timestamp"), ("n", "numeric"), ("nn", "numeric"),
         ("nul", "text"), ("by", "bytea"), ("iv", "interval")],
    )
    row = await stmt.fetchrow()
    want = {
        "i8": 7, "i2": 3, "i4": 5, "f8": 1.25, "f4": 4.0, "t": "txt", "b": True,
        "d": datetime.date(2024, 5, 6), "ts": datetime.datetime(2024, 5, 6, 7, 8, 9, 250000),
        "n": decimal.Decimal("12.34"), "nn": decimal.Decimal("-0.500"), "nul": None, "by": b"x",
        "iv": datetime.timedelta(days=1),
    }
    report("binary", {k: [type(v).__name__, v] for k, v in row.items()})
    for k, v in want.items():
        check(f"binary {k}", (row[k], type(row[k])), (v, type(v)))
    check("binary numeric scale", str(row["nn"]), "-0.500")

    stmt = await conn.prepare(
        "SELECT trip_id, vendor_id, pickup_datetime, passenger_count, fare_amount, month "
        "FROM nyc.trips WHERE month = '2024-01' ORDER BY trip_id LIMIT 2"
    )
    check(
        "lake column types",
        types(stmt.get_attributes()),
        [("trip_id", "int8"), ("vendor_id", "int4"), ("pickup_datetime", "timestamp"),
         ("passenger_count", "int4"), ("fare_amount", "float8"), ("month", "text")],
    )
    rows = await stmt.fetch()
    check(
        "lake binary rows",
        [tuple(r) for r in rows],
        [(1, 1, datetime.datetime(2024, 1, 1, 0, 0, 20, 763273), 1, 11.67, "2024-01"),
         (2, 2, datetime.datetime(2024, 1, 1, 0, 0, 21, 461532), 1, 7.07, "2024-01")],
    )


async def prepared(conn):
    stmt = await conn.prepare("SELECT zone, location_id FROM nyc.zones WHERE location_id = $1")
    check("prepared parameters", [t.name for t in stmt.get_parameters()], ["int8"])
    check("prepared attributes", types(stmt.get_attributes()), [("zone", "text"), ("location_id", "int8")])
    first = await stmt.fetchrow(3)
    report("prepared", {"parameters": [t.name for t in stmt.get_parameters()], "row_3": list(first.values())})
    check("prepared reuse 3", tuple(first), ("Bronx Zone 3", 3))
    check("prepared reuse 4", tuple(await stmt.fetchrow(4)), ("Staten Island Zone 4", 4))
    check("prepared reuse missing", await stmt.fetchrow(100000), None)
    check("prepared fetchval", await stmt.fetchval(265), "Brooklyn Zone 265")

    stmt = await conn.prepare("SELECT count(*) FROM nyc.trips WHERE month = $1 AND vendor_id = $2")
    check("prepared parameters 2", [t.name for t in stmt.get_parameters()], ["text", "int4"])
    total = 0
    for month in ("2024-04", "2024-05"):
        for vendor in (1, 2):
            total += await stmt.fetchval(month, vendor)
    check("prepared reuse counts", total, 200000)


async def introspection(conn):
    # Most array types (int8[], int4[], float8[], int2[]) are not built into asyncpg's codec table:
    # it introspects them (its WITH RECURSIVE query against pg_type/pg_range/...),
    # then decodes the binary arrays. Checked at the end of this function.
    check(
        "array_agg",
        await conn.fetchval("SELECT array_agg(location_id ORDER BY location_id) FROM nyc.zones WHERE location_id < 5"),
        [1, 2, 3, 4],
    )
    check("array_agg again", await conn.fetchval("SELECT array_agg(vendor_id ORDER BY vendor_id) FROM nyc.vendors"), [1, 2])
    check("text array", await conn.fetchval("SELECT ARRAY['a', 'b']"), ["a", "b"])
    check("int array param with NULL", await conn.fetchval("SELECT $1::int[]", [1, None, 3]), [1, None, 3])
    check("float array", await conn.fetchval("SELECT ARRAY[CAST(1.5 AS DOUBLE PRECISION)]"), [1.5])
    # int2vector / oidvector catalog columns (binary arrays of int2 / oid).
    stmt = await conn.prepare("SELECT indkey, indclass FROM pg_catalog.pg_index LIMIT 1")
    # PostgreSQL declares them int2vector / oidvector; Sluice declares int2[] / int4[]
    # on purpose (catalog.rs INT2_ARRAY_COLUMNS / OID_ARRAY_COLUMNS). Either decodes to
    # a list of ints in asyncpg.
    (k, kt), (c, ct) = types(stmt.get_attributes())
    check("int2vector-like types", (k, kt in ("int2vector", "int2[]"), c, ct in ("oidvector", "oid[]", "int4[]")),
          ("indkey", True, "indclass", True))
    row = await stmt.fetchrow()
    check("int2vector values", (type(row["indkey"]), all(isinstance(x, int) for x in row["indkey"])), (list, True))
    check("oidvector values", (type(row["indclass"]), len(row["indclass"]) == len(row["indkey"])), (list, True))
    check(
        "pg_type vectors",
        [tuple(r) for r in await conn.fetch("SELECT oid, typname FROM pg_catalog.pg_type WHERE typname IN ('int2vector', 'oidvector') ORDER BY oid")],
        [(22, "int2vector"), (30, "oidvector")],
    )
    # int2[] (1005), int4[] (1007), int8[] (1016, first for the bigint[] parameter
    # above) and float8[] (1022) were looked up, each once: asyncpg caches the answer.
    seen = [oid for batch in Introspecting.introspected for oid in batch]
    report("introspected", {
        "oids": sorted(seen),
        "int8[]": await conn.fetchval("SELECT array_agg(location_id ORDER BY location_id) FROM nyc.zones WHERE location_id < 4"),
        "int4[] param": await conn.fetchval("SELECT $1::int[]", [1, None, 3]),
    })
    check("introspected array types", sorted(seen), [1005, 1007, 1016, 1022])


async def cursors(conn):
    async with conn.transaction():
        check("in transaction", conn.is_in_transaction(), True)
        n = s = 0
        async for r in conn.cursor("SELECT trip_id FROM nyc.trips WHERE month = $1", "2024-06", prefetch=1000):
            n += 1
            s += r["trip_id"]
        check("cursor rows", n, 100000)
        check("cursor sum", s, sum(range(500001, 600001)))
        cur = await conn.cursor("SELECT location_id, zone FROM nyc.zones ORDER BY location_id")
        check("cursor fetch", [r[0] for r in await cur.fetch(3)], [1, 2, 3])
        check("cursor fetchrow", tuple(await cur.fetchrow()), (4, "Staten Island Zone 4"))
        check("cursor fetch more", [r[0] for r in await cur.fetch(2)], [5, 6])
    check("transaction ended", conn.is_in_transaction(), False)


async def timeouts(conn):
    check("fetch timeout ok", [tuple(r) for r in await conn.fetch("SELECT 1, 2", timeout=30)], [(1, 2)])
    # Half a year of trips against every zone: seconds of work (the lake has no
    # pg_sleep). Bounded on purpose: a cancelled lake query currently runs on to its
    # end on the server. It prepares at once, so the timeout hits the execution.
    long = (
        "SELECT count(*) FROM nyc.trips a CROSS JOIN nyc.zones b "
        "WHERE a.month <= '2024-06' AND a.fare_amount > b.location_id"
    )
    t0 = time.monotonic()
    try:
        await conn.fetch(long, timeout=1.0)
        fail("fetch timeout", "no error", "TimeoutError")
    except asyncio.TimeoutError:
        elapsed = time.monotonic() - t0
        check("fetch timeout raises", elapsed < 5, True)
    # asyncpg cancels the statement (CancelRequest) and waits for its end: the
    # connection is usable again right away.
    t0 = time.monotonic()
    check("usable after timeout", await conn.fetchval("SELECT 5", timeout=10), 5)
    check("cancelled statement stopped", time.monotonic() - t0 < 5, True)


async def simple_error(conn):
    # execute() without arguments uses the simple query protocol.
    try:
        await conn.execute("SELECT * FROM nope")
        fail("undefined table (simple)", "no error", "UndefinedTableError")
    except asyncpg.exceptions.UndefinedTableError as e:
        check("undefined table (simple) sqlstate", e.sqlstate, "42P01")
    check("usable after error (simple)", await conn.fetchval("SELECT 6"), 6)
    try:
        await conn.fetch("SELECT 1/0")
        fail("division by zero", "no error", "DivisionByZeroError")
    except asyncpg.exceptions.DivisionByZeroError as e:
        check("division by zero sqlstate", e.sqlstate, "22012")
    check("usable after execute error", await conn.fetchval("SELECT 7"), 7)


async def direct_tls(target):
    # Sluice requires ALPN "postgresql" for direct TLS, as PostgreSQL 17 does.
    # asyncpg sets ALPN itself only on the contexts it builds (ssl='require', etc.);
    # an SSLContext passed in is used as is. So: a context without ALPN must be
    # refused with a server error naming ALPN (08P01), not a silent disconnect; with
    # ALPN (our context, or asyncpg's own) direct TLS logs in.
    try:
        c = await asyncio.wait_for(target.connect(ssl=target.ssl(alpn=False), direct_tls=True), 20)
        await c.close()
        fail("direct tls without alpn", "connected", "an error mentioning ALPN")
    except asyncpg.PostgresError as e:
        check("direct tls without alpn refused", (e.sqlstate, "ALPN" in str(e)), ("08P01", True))
    for label, s in (("own context", target.ssl(alpn=True)), ("asyncpg require", "require")):
        c = await asyncio.wait_for(target.connect(ssl=s, direct_tls=True), 20)
        try:
            obj = c._transport.get_extra_info("ssl_object")
            check(f"direct tls {label} alpn", obj.selected_alpn_protocol(), "postgresql")
            check(f"direct tls {label} query", await c.fetchval("SELECT count(*) FROM nyc.vendors"), 2)
        finally:
            await c.close()


async def many_connections(target, n=1000, in_flight=50):
    # All n stay open together: with nothing else connected this fills the server's
    # default max_connections (1000) exactly, so a slot leaked by a finished handshake
    # would show up as a refusal.
    sem = asyncio.Semaphore(in_flight)
    errors = []
    connecting = peak = 0

    async def open_one(i):
        nonlocal connecting, peak
        async with sem:
            connecting += 1
            peak = max(peak, connecting)
            try:
                return await target.connect(timeout=120)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((i, repr(e)))
                return None
            finally:
                connecting -= 1

    t0 = time.monotonic()
    conns = await asyncio.gather(*(open_one(i) for i in range(n)))
    opened = [c for c in conns if c is not None]
    elapsed = time.monotonic() - t0
    try:
        if errors:
            for i, e in errors[:5]:
                print(f"  connection {i}: {e}")
        check(f"{n} connections opened ({elapsed:.1f}s)", (len(opened), len(errors)), (n, 0))
        check("connects in flight at most", peak, in_flight)
        check("all tls", all(c._transport.get_extra_info("ssl_object") is not None for c in opened), True)
        pids = {c.get_server_pid() for c in opened}
        check("distinct backend keys", len(pids), n)
        results = await asyncio.gather(*(c.fetchval("SELECT 1", timeout=120) for c in opened), return_exceptions=True)
        bad = [r for r in results if r != 1]
        if bad:
            print(f"  first bad results: {bad[:5]!r}")
        report("connections", {
            "opened": len(opened), "failed": len(errors), "peak_connecting": peak,
            "distinct_pids": len(pids), "queried": results.count(1), "seconds": round(elapsed, 1),
        })
        check("SELECT 1 on each", (results.count(1), len(bad)), (n, 0))
    finally:
        await asyncio.gather(*(c.close(timeout=60) for c in opened), return_exceptions=True)
    check("all closed", all(c.is_closed() for c in opened), True)


async def cursor_forward(conn):
    # asyncpg's Cursor.forward(n) sends `MOVE FORWARD n "<portal>"` (simple query) on
    # the protocol-level portal, which PostgreSQL accepts.
    async with conn.transaction():
        cur = await conn.cursor("SELECT location_id FROM nyc.zones ORDER BY location_id")
        check("cursor before forward", [r[0] for r in await cur.fetch(2)], [1, 2])
        try:
            moved = await cur.forward(10)
        except asyncpg.PostgresError as e:
            fail("cursor forward (MOVE)", f"{type(e).__name__} {e.sqlstate}: {e}", "10 rows skipped")
        check("cursor forward count", moved, 10)
        check("cursor after forward", (await cur.fetchrow())[0], 13)


async def extended_error(conn):
    # fetch() uses the extended protocol: Parse, Describe, Flush — and waits for the
    # answer before sending Sync. PostgreSQL flushes ErrorResponse as soon as it is
    # raised, so the error must arrive without a Sync.
    seen = []
    for label, sql, exc, state in (
        ("undefined table", "SELECT * FROM nope", asyncpg.exceptions.UndefinedTableError, "42P01"),
        ("undefined column", "SELECT nope FROM nyc.zones", asyncpg.exceptions.UndefinedColumnError, "42703"),
        ("syntax error", "SELEC 1", asyncpg.exceptions.PostgresSyntaxError, "42601"),
    ):
        try:
            await conn.fetch(sql, timeout=10)
            fail(f"{label} (extended)", "no error", exc.__name__)
        except asyncio.TimeoutError:
            fail(
                f"{label} (extended)",
                "no ErrorResponse within 10 s after Parse/Describe/Flush (asyncpg then cancels and syncs)",
                f"{exc.__name__} {state} at once",
            )
        except exc as e:
            seen.append([sql, type(e).__name__, e.sqlstate])
            check(f"{label} (extended) sqlstate", e.sqlstate, state)
        check(f"usable after {label} (extended)", await conn.fetchval("SELECT 8", timeout=10), 8)
    # Same with a prepared statement.
    try:
        await conn.prepare("SELECT * FROM nope", timeout=10)
        fail("prepare undefined table", "no error", "UndefinedTableError")
    except asyncio.TimeoutError:
        fail("prepare undefined table", "no ErrorResponse within 10 s", "UndefinedTableError 42P01 at once")
    except asyncpg.exceptions.UndefinedTableError as e:
        check("prepare undefined table sqlstate", e.sqlstate, "42P01")
    # The session carries on: a prepared statement with a parameter, on the lake.
    zone = await conn.fetchval("SELECT zone FROM nyc.zones WHERE location_id = $1", 7, timeout=10)
    report("errors", {"raised": seen, "then": zone})
    check("usable at the end", zone, "Brooklyn Zone 7")


async def features(target):
    conn = await target.connect(connection_class=Introspecting)
    try:
        await basics(conn)
        await parameters(conn)
        await binary_results(conn)
        await prepared(conn)
        await introspection(conn)
        await cursors(conn)
        await cursor_forward(conn)
        await timeouts(conn)
        await simple_error(conn)
    finally:
        await conn.close(timeout=10)
    await direct_tls(target)


async def on_one_connection(target, checks):
    conn = await target.connect()
    try:
        await checks(conn)
    finally:
        await conn.close(timeout=10)


MODES = {
    "features": features,
    "connections": many_connections,
    "errors": lambda target: on_one_connection(target, extended_error),
}


def main(argv):
    if len(argv) != 8 or argv[1] not in MODES:
        print(__doc__)
        sys.exit(2)
    asyncio.run(MODES[argv[1]](Target(argv[2:])))
    print("ALL OK")


if __name__ == "__main__":
    main(sys.argv)
