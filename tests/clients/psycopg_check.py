"""psycopg 3 against Sluice: server-side parameters, binary results, pipeline mode,
prepared statements. Exits non-zero with a message on the first wrong answer."""

import datetime
import decimal
import sys

import psycopg


def check(label, got, want):
    if got != want:
        print(f"FAIL {label}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {label}")


def main(dsn):
    with psycopg.connect(dsn) as conn:
        check("tls", conn.info.pgconn.ssl_in_use, True)
        with conn.cursor() as cur:
            # Server-side parameter binding (psycopg 3's default).
            cur.execute(
                "SELECT count(*) FROM nyc.trips WHERE month = %s AND passenger_count > %s",
                ("2024-02", 0),
            )
            check("params count", cur.fetchone()[0], 100000)
            cur.execute("SELECT zone FROM nyc.zones WHERE location_id = %s", (12,))
            check("params text", cur.fetchone()[0].endswith("Zone 12"), True)

        # Binary results for common types.
        with conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT CAST(7 AS BIGINT), CAST(1.25 AS DOUBLE PRECISION), 'txt', true, "
                "DATE '2024-05-06', TIMESTAMP '2024-05-06 07:08:09.25', CAST(12.34 AS DECIMAL(10,2)), "
                "CAST(-0.5 AS DECIMAL(6,3)), CAST(NULL AS TEXT)"
            )
            row = cur.fetchone()
            check("binary bigint", row[0], 7)
            check("binary float8", row[1], 1.25)
            check("binary text", row[2], "txt")
            check("binary bool", row[3], True)
            check("binary date", row[4], datetime.date(2024, 5, 6))
            check("binary timestamp", row[5], datetime.datetime(2024, 5, 6, 7, 8, 9, 250000))
            check("binary numeric", row[6], decimal.Decimal("12.34"))
            check("binary numeric negative", row[7], decimal.Decimal("-0.500"))
            check("binary null", row[8], None)
            cur.execute("SELECT trip_id, fare_amount FROM nyc.trips WHERE month = '2024-01' ORDER BY trip_id LIMIT 3")
            check("binary rows", [r[0] for r in cur.fetchall()], [1, 2, 3])

        # Text results of the same values.
        with conn.cursor() as cur:
            cur.execute("SELECT CAST(12.34 AS DECIMAL(10,2)), DATE '2024-05-06', CAST(0.1 AS DOUBLE PRECISION)")
            check("text values", cur.fetchone(), (decimal.Decimal("12.34"), datetime.date(2024, 5, 6), 0.1))

        # Pipeline mode: several statements sent before any result is read.
        with conn.pipeline():
            curs = []
            for i in range(5):
                c = conn.cursor()
                c.execute("SELECT CAST(%s AS BIGINT) + 1", (i,))
                curs.append(c)
        check("pipeline", [c.fetchone()[0] for c in curs], [1, 2, 3, 4, 5])

        # Explicitly prepared statements, reused.
        with conn.cursor() as cur:
            for month, want in (("2024-04", 100000), ("2024-05", 100000)):
                cur.execute("SELECT count(*) FROM nyc.trips WHERE month = %s", (month,), prepare=True)
                check(f"prepared {month}", cur.fetchone()[0], want)

        # Server-side cursor (named portal with fetch size).
        with conn.transaction():
            with conn.cursor(name="big") as cur:
                cur.itersize = 500
                cur.execute("SELECT trip_id FROM nyc.trips WHERE month = '2024-06'")
                n = sum(1 for _ in cur)
                check("server cursor rows", n, 100000)

        # Errors carry SQLSTATEs.
        try:
            conn.execute("SELECT * FROM nope")
            check("undefined table raises", False, True)
        except psycopg.errors.UndefinedTable:
            print("ok undefined table")
    print("ALL OK")


if __name__ == "__main__":
    main(sys.argv[1])
