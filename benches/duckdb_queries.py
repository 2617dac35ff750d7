"""DuckDB side of `cargo bench --bench lake`: the same queries over the same Parquet
files. Reads {"root": DIR, "iters": N, "queries": [[name, sql], ...]} on stdin and
prints {name: [median_ms, rows]} as JSON. Needs PyPI `duckdb`."""

import json
import statistics
import sys
import time

import duckdb

job = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("CREATE SCHEMA nyc")
files = (job["root"] + "/nyc/trips/*/*.parquet").replace("'", "''")
con.execute(
    f"CREATE VIEW nyc.trips AS SELECT * FROM read_parquet('{files}', hive_partitioning = true)"
)
out = {}
for name, sql in job["queries"]:
    rows = len(con.execute(sql).fetchall())  # warm-up
    times = []
    for _ in range(job["iters"]):
        start = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    out[name] = [statistics.median(times), rows]
print(json.dumps(out))
