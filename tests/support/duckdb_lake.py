"""DuckDB over the lake benchmark's files: the peer `cargo bench --bench lake` times and
`tests/it/lake_answers.rs` checks answers against.

Reads a job as JSON on stdin:
  {"root": DIR | null,                      # local files: DIR/nyc/trips/month=*/*.parquet
   "s3": {"endpoint": "127.0.0.1:PORT", "bucket": "lake"} | null,   # the same on S3 (moto)
   "iters": N, "answers": bool, "file_cache": bool, "queries": [[name, sql], ...]}
and prints {name: {"times_ms": [...], "rows": R, "answers": [[cell, ...], ...] | null}}.
Cells are rendered as text the way PostgreSQL's text format would (floats by repr,
NULL as null), so the caller can compare them with what a gateway returns.

Needs PyPI `duckdb` and, for S3, `duckdb-extension-httpfs` (same version; tests/setup.sh
installs both), so nothing is downloaded at run time."""

import json
import os
import sys
import time

import duckdb

job = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads TO 2")
# DuckDB keeps remote files it has read in memory by default (its external file
# cache), so a repeated query on S3 reads nothing; "file_cache": false makes every
# run read the objects, like the other sides.
if not job.get("file_cache", True):
    con.execute("SET enable_external_file_cache = false")
con.execute("CREATE SCHEMA nyc")
if job.get("s3"):
    import duckdb_extension_httpfs

    version = "v" + duckdb.__version__
    ext = os.path.join(
        duckdb_extension_httpfs.__path__[0], "extensions", version, "httpfs.duckdb_extension"
    )
    con.execute(f"LOAD '{ext}'")
    s3 = job["s3"]
    con.execute(
        "CREATE SECRET lake (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
        f"ENDPOINT '{s3['endpoint']}', URL_STYLE 'path', USE_SSL false)"
    )
    files = f"s3://{s3['bucket']}/nyc/trips/*/*.parquet"
else:
    files = job["root"] + "/nyc/trips/*/*.parquet"
files = files.replace("'", "''")
con.execute(
    f"CREATE VIEW nyc.trips AS SELECT * FROM read_parquet('{files}', hive_partitioning = true)"
)


def cell(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, float):
        return repr(v)
    return str(v)


out = {}
for name, sql in job["queries"]:
    rows = con.execute(sql).fetchall()  # warm-up, and the answers
    times = []
    for _ in range(job["iters"]):
        start = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    out[name] = {
        "times_ms": times,
        "rows": len(rows),
        "answers": [[cell(v) for v in r] for r in rows] if job.get("answers") else None,
    }
print(json.dumps(out))
