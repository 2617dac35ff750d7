//! The lake query set over the NYC-shaped trips (`sluice::lake::demo`): what
//! `cargo bench --bench lake` times against DuckDB and DataFusion, and what
//! `tests/it/lake_answers.rs` checks against DuckDB's answers. Every query orders its
//! result completely, so answers compare row by row.

/// (name, SQL), run unchanged on every side.
pub const LAKE_QUERIES: &[(&str, &str)] = &[
    // The brief's NYC queries (the Presto-on-EMR walkthrough).
    (
        "fare_by_hour",
        "SELECT EXTRACT(HOUR FROM pickup_datetime) AS hour, avg(fare_amount) AS avg_fare \
         FROM nyc.trips GROUP BY 1 ORDER BY 1",
    ),
    (
        "tip_buckets",
        "SELECT bucket, count(*) AS trips FROM (\
           SELECT CASE WHEN tip_amount / fare_amount < 0.05 THEN 'low' \
                       WHEN tip_amount / fare_amount < 0.15 THEN 'mid' \
                       ELSE 'high' END AS bucket \
           FROM (SELECT tip_amount, fare_amount FROM nyc.trips WHERE fare_amount > 0) t\
         ) b GROUP BY bucket ORDER BY bucket",
    ),
    // Grouping by the Hive partition column.
    (
        "revenue_by_month",
        "SELECT month, count(*) AS trips, sum(total_amount) AS revenue \
         FROM nyc.trips GROUP BY month ORDER BY month",
    ),
    // A partition filter and a row filter.
    (
        "march_groups",
        "SELECT count(*) AS trips, avg(trip_distance) AS avg_distance FROM nyc.trips \
         WHERE month = '2024-03' AND passenger_count > 2",
    ),
    // Top-N over every row.
    (
        "longest_trips",
        "SELECT trip_id, trip_distance, fare_amount FROM nyc.trips \
         ORDER BY trip_distance DESC, trip_id LIMIT 10",
    ),
    // Selective filters: one day (pickups are sorted, so row-group statistics
    // prune), one vendor.
    (
        "one_day",
        "SELECT count(*) AS trips, sum(total_amount) AS revenue, max(trip_distance) AS longest \
         FROM nyc.trips \
         WHERE pickup_datetime >= TIMESTAMP '2024-06-15 00:00:00' \
           AND pickup_datetime < TIMESTAMP '2024-06-16 00:00:00'",
    ),
    (
        "one_vendor",
        "SELECT payment_type, count(*) AS trips, avg(tip_amount) AS avg_tip FROM nyc.trips \
         WHERE vendor_id = 2 GROUP BY payment_type ORDER BY payment_type",
    ),
    // High-cardinality group-bys: ~97 k and ~1 M groups.
    (
        "zone_days",
        "SELECT pickup_location_id, date_trunc('day', pickup_datetime) AS day, count(*) AS trips \
         FROM nyc.trips GROUP BY 1, 2 ORDER BY trips DESC, 1, 2 LIMIT 10",
    ),
    (
        "distinct_fares",
        "SELECT count(*) AS pairs FROM (\
           SELECT trip_distance, fare_amount FROM nyc.trips GROUP BY 1, 2) p",
    ),
    // Answerable from Parquet metadata alone.
    ("count_all", "SELECT count(*) AS trips FROM nyc.trips"),
    (
        "extremes",
        "SELECT min(trip_distance) AS shortest, max(fare_amount) AS top_fare, \
         max(trip_id) AS last_id FROM nyc.trips",
    ),
];
