"""Delta Lake and Apache Iceberg tables written by their own writers, in moto's S3
and Glue, for tests/it/open_formats.rs and `cargo bench --bench lake` (section
`formats`). Reads a job as JSON on stdin and prints JSON:

  {"do": "write", "endpoint": "http://127.0.0.1:PORT", "database": "open"}
      Writes the test tables (see TABLES below) with PyPI `deltalake` (delta-rs)
      and `pyiceberg` (Glue catalog), registers the Delta tables in Glue, and
      prints every version's row count and id sum as the writers' readers see them.
  {"do": "append", "endpoint": ..., "database": ...}
      One more commit to d_events and i_events (ids 5000..5009).
  {"do": "duckdb", "endpoint": ..., "queries": [[name, sql], ...]}
      DuckDB's answers (with its delta and iceberg extensions from PyPI), cells as
      text the way PostgreSQL's text format shows them.
  {"do": "nyc", "endpoint": ..., "root": DIR, "database": "nyc_formats"}
      The lake benchmark's trips (DIR/nyc/trips/month=*/part-0.parquet) as a Delta
      table and an Iceberg table, both partitioned by month (the benchmark).

Nothing is downloaded at run time: tests/setup.sh installs the packages."""

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import boto3
import pyarrow as pa
import pyarrow.compute as pc

job = json.load(sys.stdin)
ENDPOINT = job["endpoint"]
BUCKET = "lake"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
)
DELTA_OPTIONS = {
    "AWS_ENDPOINT_URL": ENDPOINT,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
}
BASE = datetime(2024, 3, 1, tzinfo=timezone.utc)


def glue():
    return boto3.client("glue", endpoint_url=ENDPOINT, region_name="us-east-1")


def s3():
    return boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1")


def catalog():
    from pyiceberg.catalog import load_catalog

    return load_catalog(
        "glue",
        **{
            "type": "glue",
            "glue.endpoint": ENDPOINT,
            "glue.region": "us-east-1",
            "glue.access-key-id": "testing",
            "glue.secret-access-key": "testing",
            "s3.endpoint": ENDPOINT,
            "s3.region": "us-east-1",
            "s3.access-key-id": "testing",
            "s3.secret-access-key": "testing",
            # fsspec (s3fs) rather than pyarrow's S3 client, whose multipart
            # uploads moto does not complete.
            "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO",
        },
    )


def events(start, stop, note=False, tz=True):
    ids = list(range(start, stop))
    cols = {
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([f"name-{i % 37}" for i in ids], pa.string()),
        "amount": pa.array([round((i % 101) * 1.25, 2) for i in ids], pa.float64()),
        "ts": pa.array(
            [BASE + timedelta(minutes=7 * i) for i in ids],
            pa.timestamp("us", tz="UTC" if tz else None),
        ),
    }
    if note:
        cols["note"] = pa.array([f"note {i}" for i in ids], pa.string())
    return pa.table(cols)


def sales(regions, rows, scale):
    region, ids, amount = [], [], []
    for r in regions:
        for i in range(rows):
            region.append(r)
            ids.append(i)
            amount.append(round(i * scale, 2))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "region": pa.array(region, pa.string()),
            "amount": pa.array(amount, pa.float64()),
        }
    )


def summary(table):
    ids = table.column("id")
    return {"rows": table.num_rows, "id_sum": pc.sum(ids).as_py() or 0}


def register_delta(database, name, location):
    glue().create_table(
        DatabaseName=database,
        TableInput={
            "Name": name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"table_type": "DELTA", "classification": "delta"},
            "StorageDescriptor": {"Location": location, "Columns": []},
        },
    )


def delta_versions(uri):
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=DELTA_OPTIONS)
    stamps = {c.get("version"): c.get("timestamp") for c in table.history()}
    out = []
    for v in range(table.version() + 1):
        t = DeltaTable(uri, version=v, storage_options=DELTA_OPTIONS)
        out.append({"version": v, "timestamp_ms": stamps.get(v), **summary(t.to_pyarrow_table())})
    return out


def iceberg_snapshots(table):
    out = []
    for s in table.snapshots():
        data = table.scan(snapshot_id=s.snapshot_id).to_arrow()
        out.append(
            {"version": s.snapshot_id, "timestamp_ms": s.timestamp_ms, **summary(data)}
        )
    return out


def write_delta(database):
    from deltalake import write_deltalake, DeltaTable

    out = {}
    uri = f"s3://{BUCKET}/delta/events"
    write_deltalake(uri, events(0, 2000), storage_options=DELTA_OPTIONS)
    write_deltalake(uri, events(2000, 3000), mode="append", storage_options=DELTA_OPTIONS)
    DeltaTable(uri, storage_options=DELTA_OPTIONS).delete("id < 100")
    write_deltalake(
        uri,
        events(3000, 3100, note=True),
        mode="append",
        schema_mode="merge",
        storage_options=DELTA_OPTIONS,
    )
    register_delta(database, "d_events", uri + "/")
    out["d_events"] = delta_versions(uri)

    # Commits a second apart: time travel by timestamp finds a Delta version by its
    # commit file's modification time, which moto keeps to the second.
    uri = f"s3://{BUCKET}/delta/sales"
    write_deltalake(
        uri, sales(["eu", "us", "latam"], 500, 1.5), partition_by=["region"],
        storage_options=DELTA_OPTIONS,
    )
    time.sleep(1.1)
    write_deltalake(
        uri, sales(["eu", "us", "latam"], 300, 2.25), partition_by=["region"],
        mode="overwrite", storage_options=DELTA_OPTIONS,
    )
    time.sleep(1.1)
    write_deltalake(
        uri, sales(["apac"], 200, 0.5), partition_by=["region"], mode="append",
        storage_options=DELTA_OPTIONS,
    )
    register_delta(database, "d_sales", uri)
    out["d_sales"] = delta_versions(uri)

    # A later writer's table: a reader feature no released reader knows.
    uri = f"s3://{BUCKET}/delta/future"
    write_deltalake(uri, events(0, 10), storage_options=DELTA_OPTIONS)
    commit = {
        "protocol": {
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": ["sluiceTestFutureFeature"],
            "writerFeatures": ["sluiceTestFutureFeature"],
        }
    }
    s3().put_object(
        Bucket=BUCKET,
        Key="delta/future/_delta_log/00000000000000000001.json",
        Body=(json.dumps(commit) + "\n").encode(),
    )
    register_delta(database, "d_future", uri)
    return out


def write_iceberg(database):
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, IdentityTransform

    cat = catalog()
    out, metadata = {}, {}
    t = cat.create_table(
        f"{database}.i_events",
        schema=events(0, 1).schema,
        location=f"s3://{BUCKET}/iceberg/events",
    )
    t.append(events(0, 2000))
    t.append(events(2000, 3000))
    t.delete("id < 100")
    with t.update_schema() as update:
        update.union_by_name(events(0, 1, note=True).schema)
    t.append(events(3000, 3100, note=True))
    out["i_events"] = iceberg_snapshots(t)
    metadata["i_events"] = t.metadata_location

    sales_schema = sales(["x"], 1, 1).schema
    t = cat.create_table(
        f"{database}.i_sales",
        schema=sales_schema,
        location=f"s3://{BUCKET}/iceberg/sales",
    )
    with t.update_spec() as spec:
        spec.add_identity("region")
    t.append(sales(["eu", "us", "latam"], 500, 1.5))
    t.overwrite(sales(["eu", "us", "latam"], 300, 2.25))
    t.append(sales(["apac"], 200, 0.5))
    out["i_sales"] = iceberg_snapshots(t)
    metadata["i_sales"] = t.metadata_location

    # Partitioned by day of a timestamp: ten days, one file each.
    naive = events(0, 1, tz=False).schema
    t = cat.create_table(
        f"{database}.i_days",
        schema=naive,
        location=f"s3://{BUCKET}/iceberg/days",
    )
    with t.update_spec() as spec:
        spec.add_field("ts", DayTransform(), "ts_day")
    # 7-minute steps: 2060 rows span ten days.
    t.append(events(0, 2060, tz=False))
    out["i_days"] = iceberg_snapshots(t)
    metadata["i_days"] = t.metadata_location

    t = cat.create_table(
        f"{database}.i_renamed",
        schema=events(0, 1).schema,
        location=f"s3://{BUCKET}/iceberg/renamed",
    )
    t.append(events(0, 50))
    with t.update_schema() as update:
        update.rename_column("name", "label")
    t.append(
        events(50, 60).rename_columns(["id", "label", "amount", "ts"])
    )
    metadata["i_renamed"] = t.metadata_location
    return out, metadata


def append(database):
    from deltalake import write_deltalake

    write_deltalake(
        f"s3://{BUCKET}/delta/events",
        events(5000, 5010, note=True),
        mode="append",
        storage_options=DELTA_OPTIONS,
    )
    catalog().load_table(f"{database}.i_events").append(events(5000, 5010, note=True))


def cell(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def duckdb_answers(queries):
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_delta
    import duckdb_extension_httpfs
    import duckdb_extension_iceberg

    con = duckdb.connect()
    version = "v" + duckdb.__version__
    for module, name in [
        (duckdb_extension_httpfs, "httpfs"),
        (duckdb_extension_avro, "avro"),
        (duckdb_extension_delta, "delta"),
        (duckdb_extension_iceberg, "iceberg"),
    ]:
        ext = os.path.join(module.__path__[0], "extensions", version, f"{name}.duckdb_extension")
        con.execute(f"LOAD '{ext}'")
    host = ENDPOINT.removeprefix("http://")
    con.execute(
        "CREATE SECRET lake (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
        f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"
    )
    out = {}
    for name, sql in queries:
        rows = con.execute(sql).fetchall()
        out[name] = [[cell(v) for v in r] for r in rows]
    return out


def nyc(root, database, out=None):
    """The benchmark's trips as Delta and Iceberg tables (partitioned by month), in
    moto's S3, or under the local folder `out` when given."""
    import glob

    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    glue().create_database(DatabaseInput={"Name": database})
    files = sorted(glob.glob(os.path.join(root, "nyc", "trips", "month=*", "*.parquet")))
    cat = catalog()
    base = f"file://{out}" if out else f"s3://{BUCKET}/formats"
    uri = f"{out}/delta/trips" if out else f"{base}/delta/trips"
    ice = None
    for f in files:
        month = os.path.basename(os.path.dirname(f)).split("=", 1)[1]
        data = pq.read_table(f)
        data = data.append_column("month", pa.array([month] * data.num_rows, pa.string()))
        write_deltalake(
            uri, data, partition_by=["month"], mode="append",
            storage_options=None if out else DELTA_OPTIONS,
        )
        if ice is None:
            ice = cat.create_table(
                f"{database}.trips_iceberg",
                schema=data.schema,
                location=f"{base}/iceberg/trips",
            )
            with ice.update_spec() as spec:
                spec.add_identity("month")
        ice.append(data)
    register_delta(database, "trips_delta", f"file://{uri}" if out else uri)
    return {"iceberg_metadata": ice.metadata_location if ice else None}


if job["do"] == "write":
    database = job["database"]
    glue().create_database(DatabaseInput={"Name": database})
    versions = write_delta(database)
    iceberg, metadata = write_iceberg(database)
    versions.update(iceberg)
    print(json.dumps({"versions": versions, "metadata": metadata}))
elif job["do"] == "append":
    append(job["database"])
    print("{}")
elif job["do"] == "duckdb":
    print(json.dumps(duckdb_answers(job["queries"])))
elif job["do"] == "nyc":
    print(json.dumps(nyc(job["root"], job["database"], job.get("out"))))
else:
    sys.exit(f"unknown job {job['do']!r}")
