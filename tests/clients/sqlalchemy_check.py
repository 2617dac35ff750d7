"""SQLAlchemy 2 against Sluice over verified TLS: Inspector reflection of the lake
and of a gateway materialized view, MetaData.reflect, autoloaded Tables, Core and ORM
queries with bound parameters, text(). Exits non-zero with a message on the first
wrong answer.

Usage: python3 sqlalchemy_check.py MODE URL
  MODE  features: everything above
        gaps: reflection answers where Sluice still differs from PostgreSQL
  URL   postgresql+psycopg://demo:demo@localhost:5439/sluice?sslmode=verify-full
        postgresql+asyncpg://demo:demo@localhost:5439/sluice?ssl=verify-full
        (both drivers take the CA from PGSSLROOTCERT)
An async driver (+asyncpg) runs the same checks through create_async_engine and
AsyncConnection.run_sync, plus AsyncSession.

The gateway must declare the view mv.trips_by_vendor as
  SELECT vendor_id, count(*) AS trips FROM nyc.trips GROUP BY vendor_id"""

import asyncio
import datetime
import json
import sys
import time

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def report(name, value):
    """A `RESULT name json` line: the values the Rust test asserts on."""
    print(f"RESULT {name} {json.dumps(value, default=str)}")


def check(label, got, want):
    if got != want:
        print(f"FAIL {label}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {label}")


class Base(DeclarativeBase):
    pass


class Zone(Base):
    __tablename__ = "zones"
    __table_args__ = {"schema": "nyc"}
    location_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    borough: Mapped[str] = mapped_column(Text)
    zone: Mapped[str] = mapped_column(Text)
    service_zone: Mapped[str] = mapped_column(Text)


class Vendor(Base):
    __tablename__ = "vendors"
    __table_args__ = {"schema": "nyc"}
    vendor_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    active: Mapped[bool]


BOROUGHS = [("Bronx", 44), ("Brooklyn", 45), ("EWR", 44), ("Manhattan", 44), ("Queens", 44), ("Staten Island", 44)]


def type_names(columns):
    return {c["name"]: type(c["type"]).__name__ for c in columns}


VIEW_ROWS = [(1, 600598), (2, 599402)]


def uses_tls(conn):
    driver = conn.connection.driver_connection
    if hasattr(driver, "info"):  # psycopg
        return driver.info.pgconn.ssl_in_use
    return driver._transport.get_extra_info("ssl_object") is not None  # asyncpg


def wait_for_view(conn):
    # Declared views are filled by the scheduler right after start-up.
    deadline = time.monotonic() + 60
    while True:
        try:
            rows = conn.execute(text("SELECT vendor_id, trips FROM mv.trips_by_vendor ORDER BY vendor_id")).all()
            if rows:
                conn.commit()
                return [tuple(r) for r in rows]
        except sa.exc.DBAPIError:
            pass
        conn.rollback()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def inspector_checks(conn):
    check("tls", uses_tls(conn), True)
    check("view filled", wait_for_view(conn), VIEW_ROWS)
    insp = inspect(conn)
    # SQLAlchemy leaves out pg_* schemas; PostgreSQL lists information_schema too.
    check("schema names", insp.get_schema_names(), ["information_schema", "mv", "nyc", "public"])
    check("default schema", insp.default_schema_name, "public")
    check("nyc table names", sorted(insp.get_table_names("nyc")), ["trips", "vendors", "zones"])
    check("public table names", insp.get_table_names("public"), [])
    # PostgreSQL would list the gateway view under materialized views; Sluice lists
    # it as a table today (see `gaps`). Either way it is the one relation in `mv`.
    check(
        "mv relations",
        sorted(insp.get_table_names("mv") + insp.get_materialized_view_names("mv")),
        ["trips_by_vendor"],
    )
    for schema in ("nyc", "mv", "public"):
        check(f"{schema} view names", insp.get_view_names(schema), [])
        check(f"{schema} sequence names", insp.get_sequence_names(schema), [])
    check("nyc materialized view names", insp.get_materialized_view_names("nyc"), [])
    check("has_table", (insp.has_table("zones", schema="nyc"), insp.has_table("nope", schema="nyc")), (True, False))
    check("has_schema", (insp.has_schema("nyc"), insp.has_schema("nope")), (True, False))

    zones = insp.get_columns("zones", "nyc")
    check("zones column names", [c["name"] for c in zones], ["location_id", "borough", "zone", "service_zone"])
    check(
        "zones column types",
        type_names(zones),
        {"location_id": "BIGINT", "borough": "TEXT", "zone": "TEXT", "service_zone": "TEXT"},
    )
    check("zones columns nullable (CSV)", [c["nullable"] for c in zones], [True] * 4)
    check("zones column defaults", [c["default"] for c in zones], [None] * 4)

    trips = insp.get_columns("trips", "nyc")
    tt = type_names(trips)
    check("trips column count", len(trips), 18)
    check(
        "trips column types",
        {k: tt.get(k) for k in ("vendor_id", "pickup_datetime", "passenger_count", "trip_distance", "fare_amount",
                                 "tip_amount", "total_amount", "pickup_location_id", "trip_id", "month")},
        {"vendor_id": "INTEGER", "pickup_datetime": "TIMESTAMP", "passenger_count": "INTEGER",
         "trip_distance": "DOUBLE_PRECISION", "fare_amount": "DOUBLE_PRECISION", "tip_amount": "DOUBLE_PRECISION",
         "total_amount": "DOUBLE_PRECISION", "pickup_location_id": "INTEGER", "trip_id": "BIGINT", "month": "TEXT"},
    )
    pickup = next(c for c in trips if c["name"] == "pickup_datetime")
    check("pickup_datetime without time zone", pickup["type"].timezone, False)
    check("trips columns not null (Parquet)", pickup["nullable"], False)

    vendors = insp.get_columns("vendors", "nyc")
    check(
        "vendors column types",
        type_names(vendors),
        {"vendor_id": "BIGINT", "name": "TEXT", "active": "BOOLEAN"},
    )
    view = insp.get_columns("trips_by_vendor", "mv")
    check("view column types", [(c["name"], type(c["type"]).__name__) for c in view],
          [("vendor_id", "INTEGER"), ("trips", "BIGINT")])

    # Lake files declare no keys, indexes or constraints: every answer is empty.
    for schema, table in (("nyc", "zones"), ("nyc", "trips"), ("nyc", "vendors"), ("mv", "trips_by_vendor")):
        pk = insp.get_pk_constraint(table, schema)
        check(f"{table} primary key", (pk["constrained_columns"], pk.get("name")), ([], None))
        check(f"{table} foreign keys", insp.get_foreign_keys(table, schema), [])
        check(f"{table} indexes", insp.get_indexes(table, schema), [])
        check(f"{table} unique constraints", insp.get_unique_constraints(table, schema), [])
        check(f"{table} check constraints", insp.get_check_constraints(table, schema), [])
        check(f"{table} comment", insp.get_table_comment(table, schema), {"text": None})
    check(
        "multi columns",
        sorted(insp.get_multi_columns("nyc").keys()),
        [("nyc", "trips"), ("nyc", "vendors"), ("nyc", "zones")],
    )
    relations = (("nyc", "trips"), ("nyc", "vendors"), ("nyc", "zones"), ("mv", "trips_by_vendor"))
    report("reflection", {
        "schemas": insp.get_schema_names(),
        "relations": {s: sorted(insp.get_table_names(s) + insp.get_materialized_view_names(s)) for s in ("mv", "nyc", "public")},
        "views": {s: insp.get_view_names(s) for s in ("mv", "nyc", "public")},
        "columns": {
            f"{s}.{t}": [[c["name"], type(c["type"]).__name__, c["nullable"]] for c in insp.get_columns(t, s)]
            for s, t in relations
        },
        "primary_keys": {f"{s}.{t}": insp.get_pk_constraint(t, s)["constrained_columns"] for s, t in relations},
        "foreign_keys": {f"{s}.{t}": insp.get_foreign_keys(t, s) for s, t in relations},
    })
    check("multi foreign keys", sorted(insp.get_multi_foreign_keys("nyc").items()),
          [(("nyc", "trips"), []), (("nyc", "vendors"), []), (("nyc", "zones"), [])])


def gap_checks(conn):
    insp = inspect(conn)
    wrong = []

    def expect(label, got, want):
        print(f"{'ok' if got == want else 'FAIL'} {label}: got {got!r}, want {want!r}")
        if got != want:
            wrong.append(label)

    # PostgreSQL's pg_table_is_visible follows search_path ("$user", public): with
    # no schema given, only public's tables. Sluice answers true for every table.
    expect("default-schema table names", insp.get_table_names(), [])
    # A materialized view is relkind 'm' in PostgreSQL; Sluice reports 'r'.
    expect("mv materialized view names", insp.get_materialized_view_names("mv"), ["trips_by_vendor"])
    expect("mv table names", insp.get_table_names("mv"), [])
    if wrong:
        sys.exit(1)


def reflection_checks(conn):
    md = MetaData()
    md.reflect(bind=conn, schema="nyc")
    check("MetaData.reflect tables", sorted(md.tables), ["nyc.trips", "nyc.vendors", "nyc.zones"])
    check("reflected trips columns", len(md.tables["nyc.trips"].columns), 18)
    check("reflected trip_id type", type(md.tables["nyc.trips"].c.trip_id.type).__name__, "BIGINT")

    zones = Table("zones", MetaData(), schema="nyc", autoload_with=conn)
    check("autoload columns", [c.name for c in zones.columns], ["location_id", "borough", "zone", "service_zone"])
    check("autoload python types", [c.type.python_type for c in zones.columns], [int, str, str, str])
    check("autoload primary key", list(zones.primary_key.columns), [])
    return zones, md.tables["nyc.trips"]


def core_checks(conn, zones, trips):
    # group_by / order_by / func.count on the reflected table.
    rows = conn.execute(
        select(zones.c.borough, func.count().label("n")).group_by(zones.c.borough).order_by(zones.c.borough)
    ).all()
    check("core group by", [tuple(r) for r in rows], BOROUGHS)

    # where with bound parameters, order_by, limit.
    stmt = (
        select(zones.c.location_id, zones.c.zone)
        .where(zones.c.borough == bindparam("b"), zones.c.location_id > bindparam("after"))
        .order_by(zones.c.location_id.desc())
        .limit(3)
    )
    rows = conn.execute(stmt, {"b": "EWR", "after": 200}).all()
    check("core where/order/limit", [tuple(r) for r in rows], [(263, "EWR Zone 263"), (257, "EWR Zone 257"), (251, "EWR Zone 251")])
    report("core", {"ewr_after_200": [list(r) for r in rows]})
    rows = conn.execute(stmt, {"b": "Brooklyn", "after": 250}).all()
    check("core same statement other params", [r.location_id for r in rows], [265, 259, 253])

    # in_ with an expanding parameter, between, offset.
    rows = conn.execute(
        select(zones.c.zone).where(zones.c.location_id.in_([5, 7, 400])).order_by(zones.c.location_id)
    ).scalars().all()
    check("core in_", rows, ["EWR Zone 5", "Brooklyn Zone 7"])
    rows = conn.execute(
        select(zones.c.location_id).where(zones.c.location_id.between(10, 20)).order_by(zones.c.location_id).offset(8)
    ).scalars().all()
    check("core between/offset", rows, [18, 19, 20])

    # Aggregates over the Parquet table.
    row = conn.execute(
        select(
            func.count(),
            func.sum(trips.c.passenger_count),
            func.avg(trips.c.passenger_count),
            func.avg(trips.c.fare_amount),
            func.max(trips.c.fare_amount),
            func.min(trips.c.pickup_datetime),
        ).where(trips.c.month == "2024-03")
    ).one()
    check("core count", row[0], 100000)
    check("core sum", row[1], 190648)
    check("core avg int", round(float(row[2]), 6), 1.90648)
    check("core avg float", abs(row[3] - 11.7105275) < 1e-9, True)
    check("core max", row[4], 86.35)
    check("core min timestamp", row[5], datetime.datetime(2024, 3, 1, 0, 0, 12, 592421))

    rows = conn.execute(
        select(trips.c.vendor_id, func.count(), func.sum(trips.c.passenger_count))
        .where(trips.c.month == bindparam("m"))
        .group_by(trips.c.vendor_id)
        .order_by(trips.c.vendor_id)
        , {"m": "2024-07"}
    ).all()
    check("core group by vendor", [tuple(r) for r in rows], [(1, 50093, 95389), (2, 49907, 95283)])
    n = conn.execute(
        select(func.count()).select_from(trips)
        .where(trips.c.month.between("2024-01", "2024-03"), trips.c.passenger_count >= 3)
    ).scalar_one()
    check("core count between", n, 78953)
    n = conn.execute(
        select(func.count()).select_from(trips).where(
            trips.c.pickup_datetime >= datetime.datetime(2024, 3, 1),
            trips.c.pickup_datetime < datetime.datetime(2024, 4, 1),
        )
    ).scalar_one()
    check("core timestamp parameters", n, 100000)

    # A join between the CSV and Parquet tables.
    rows = conn.execute(
        select(zones.c.borough, func.count())
        .select_from(trips.join(zones, trips.c.pickup_location_id == zones.c.location_id))
        .where(trips.c.month == "2024-03")
        .group_by(zones.c.borough)
        .order_by(zones.c.borough)
    ).all()
    check("core join boroughs", [r[0] for r in rows], [b for b, _ in BOROUGHS])
    check("core join total", sum(r[1] for r in rows), conn.execute(
        select(func.count()).select_from(trips).where(trips.c.month == "2024-03", trips.c.pickup_location_id.between(1, 265))
    ).scalar_one())

    # text() with bind parameters.
    check(
        "text bindparams",
        conn.execute(text("SELECT zone FROM nyc.zones WHERE location_id = :id").bindparams(id=7)).scalar_one(),
        "Brooklyn Zone 7",
    )
    check(
        "text execute params",
        conn.execute(
            text("SELECT count(*) FROM nyc.trips WHERE month = :m AND passenger_count > :p"), {"m": "2024-02", "p": 0}
        ).scalar_one(),
        100000,
    )
    t = text("SELECT count(*) FROM nyc.trips WHERE CAST(pickup_datetime AS DATE) = :d").bindparams(
        bindparam("d", type_=Date)
    )
    check("text typed date bindparam", conn.execute(t, {"d": datetime.date(2024, 3, 5)}).scalar_one(), 3188)
    t = text("SELECT location_id, zone FROM nyc.zones WHERE location_id < :n ORDER BY location_id").columns(
        Column("location_id", BigInteger), Column("zone", Text)
    )
    rows = conn.execute(t, {"n": 4}).mappings().all()
    check("text columns mappings", [dict(r) for r in rows], [
        {"location_id": 1, "zone": "Brooklyn Zone 1"},
        {"location_id": 2, "zone": "Queens Zone 2"},
        {"location_id": 3, "zone": "Bronx Zone 3"},
    ])
    check("literal types", tuple(conn.execute(select(sa.literal(5, Integer), sa.literal("x"), sa.true())).one()), (5, "x", True))

    view = Table("trips_by_vendor", MetaData(), schema="mv", autoload_with=conn)
    rows = conn.execute(select(view).order_by(view.c.vendor_id)).all()
    report("view", [list(r) for r in rows])
    check("core select on the view", [tuple(r) for r in rows], VIEW_ROWS)


def orm_checks(conn):
    with Session(bind=conn) as session:
        zones = session.scalars(
            select(Zone).where(Zone.borough == "Queens").order_by(Zone.location_id).limit(3)
        ).all()
        check("orm scalars", [(z.location_id, z.zone, z.service_zone) for z in zones],
              [(2, "Queens Zone 2", "Boro Zone"), (8, "Queens Zone 8", "Boro Zone"), (14, "Queens Zone 14", "Boro Zone")])
        check("orm instances", all(isinstance(z, Zone) for z in zones), True)
        report("orm", [[z.location_id, z.zone, z.service_zone] for z in zones])
        z = session.get(Zone, 5)
        check("orm get", (z.location_id, z.borough, z.zone, z.service_zone), (5, "EWR", "EWR Zone 5", "EWR"))
        check("orm get identity map", session.get(Zone, 5) is z, True)
        check("orm get missing", session.get(Zone, 100000), None)
        rows = session.execute(
            select(Zone.service_zone, func.count(Zone.location_id)).group_by(Zone.service_zone).order_by(Zone.service_zone)
        ).all()
        check("orm group by", [tuple(r) for r in rows], [("Boro Zone", 177), ("EWR", 44), ("Yellow Zone", 44)])
        ids = session.scalars(
            select(Zone.location_id).where(Zone.zone.like("Manhattan Zone 1%")).order_by(Zone.location_id)
        ).all()
        # The demo zones cycle through six boroughs: Manhattan is every id divisible by 6.
        check("orm like", ids, [i for i in range(1, 266) if i % 6 == 0 and str(i).startswith("1")])
        vendors = session.scalars(select(Vendor).where(Vendor.active.is_(True)).order_by(Vendor.vendor_id)).all()
        check("orm vendors", [(v.vendor_id, v.name) for v in vendors],
              [(1, "Creative Mobile Technologies"), (2, "VeriFone Inc.")])


def run_all(conn):
    inspector_checks(conn)
    zones, trips = reflection_checks(conn)
    core_checks(conn, zones, trips)
    orm_checks(conn)


def run_sync(url, checks):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            checks(conn)
    finally:
        engine.dispose()


async def run_async(url, checks):
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(checks)
            if checks is not run_all:
                return
            # A native async Core query too.
            result = await conn.execute(select(func.count()).select_from(Zone.__table__))
            check("async core count", result.scalar_one(), 265)
        async with AsyncSession(engine) as session:
            zones = (await session.scalars(select(Zone).where(Zone.location_id <= 3).order_by(Zone.location_id))).all()
            check("async session scalars", [z.zone for z in zones], ["Brooklyn Zone 1", "Queens Zone 2", "Bronx Zone 3"])
            z = await session.get(Zone, 5)
            check("async session get", z.zone, "EWR Zone 5")
            stream = await session.stream_scalars(select(Zone.location_id).order_by(Zone.location_id))
            ids = [i async for i in stream]
            check("async session stream", ids, list(range(1, 266)))
    finally:
        await engine.dispose()


MODES = {"features": run_all, "gaps": gap_checks}


def main(mode, url):
    checks = MODES[mode]
    if sa.engine.make_url(url).get_dialect().is_async:
        asyncio.run(run_async(url, checks))
    else:
        run_sync(url, checks)
    print("ALL OK")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in MODES:
        print(__doc__)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
