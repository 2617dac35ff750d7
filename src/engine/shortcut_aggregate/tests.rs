use super::*;
use datafusion::arrow::array::{Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

/// `t/region=…/day=…/part.parquet` with a few batches each, and a context over it
/// with or without the rule.
async fn context(dir: &std::path::Path, with_rule: bool) -> SessionContext {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]));
    let mut id = 0i64;
    for region in ["east", "west"] {
        for day in 1..=3 {
            let path = dir.join(format!("t/region={region}/day={day}"));
            std::fs::create_dir_all(&path).unwrap();
            let file = std::fs::File::create(path.join("part.parquet")).unwrap();
            let mut writer =
                datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)
                    .unwrap();
            for _ in 0..3 {
                let ids: Vec<i64> = (0..100)
                    .map(|_| {
                        id += 1;
                        id
                    })
                    .collect();
                let xs: Vec<Option<f64>> = ids
                    .iter()
                    .map(|i| (i % 7 != 0).then_some(*i as f64 * 0.5))
                    .collect();
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(ids)),
                        Arc::new(Float64Array::from(xs)),
                    ],
                )
                .unwrap();
                writer.write(&batch).unwrap();
            }
            writer.close().unwrap();
        }
    }
    // Small batches: many per file, and the two files of a partition group share
    // nothing but the scan.
    let config = SessionConfig::new()
        .with_target_partitions(2)
        .with_batch_size(64);
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if with_rule {
        builder = builder.with_physical_optimizer_rules(physical_optimizer_rules());
    }
    let ctx = SessionContext::new_with_state(builder.build());
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            ("region".into(), crate::lake::PARTITION_TEXT),
            ("day".into(), DataType::Int32),
        ]);
    ctx.register_listing_table("t", format!("{}/t/", dir.display()), options, None, None)
        .await
        .unwrap();
    ctx
}

async fn run(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn shortcuts_answer_as_the_hash_aggregate_does() {
    let dir = tempfile::tempdir().unwrap();
    let plain = context(dir.path(), false).await;
    let ruled = context(dir.path(), true).await;
    for (sql, applies) in [
        (
            "SELECT region, count(*), count(x), sum(x), avg(x), min(x), max(id) \
             FROM t GROUP BY region ORDER BY region",
            true,
        ),
        (
            "SELECT region, day, count(*), sum(x) FROM t WHERE x > 10 \
             GROUP BY day, region ORDER BY region, day",
            true,
        ),
        (
            "SELECT day, avg(x) FROM (SELECT day, x * 2 AS x FROM t) s \
             GROUP BY day ORDER BY day",
            true,
        ),
        // By a CASE of literals: NULL conditions fall through, a later WHEN that
        // would divide by zero is never evaluated on the rows an earlier one took,
        // and a CASE without ELSE groups the rest as NULL.
        (
            "SELECT b, count(*), sum(x), avg(id) FROM (SELECT CASE WHEN x < 40 THEN 'low' \
             WHEN x < 200 THEN 'mid' ELSE 'high' END AS b, x, id FROM t) s \
             GROUP BY b ORDER BY b",
            true,
        ),
        (
            "SELECT b, count(*) FROM (SELECT CASE WHEN id % 10 = 0 THEN 'tens' \
             WHEN 100 / (id % 10) > 20 THEN 'big' ELSE 'small' END AS b FROM t) s \
             GROUP BY b ORDER BY b",
            true,
        ),
        (
            "SELECT b, max(x) FROM (SELECT CASE WHEN x > 300 THEN 1 END AS b, x FROM t) s \
             GROUP BY b ORDER BY b",
            true,
        ),
        (
            "SELECT b, count(*) FROM (SELECT CASE WHEN x > 300 THEN region ELSE 'n' END AS b \
             FROM t) s GROUP BY b ORDER BY b",
            false,
        ),
        // Not by partition columns only, DISTINCT, FILTER: the hash aggregate stays.
        (
            "SELECT id % 3 AS k, count(*) FROM t GROUP BY 1 ORDER BY 1",
            false,
        ),
        (
            "SELECT region, count(DISTINCT id % 5) FROM t GROUP BY region ORDER BY 1",
            false,
        ),
        (
            "SELECT region, count(*) FILTER (WHERE x > 3) FROM t GROUP BY region ORDER BY 1",
            false,
        ),
    ] {
        assert_eq!(run(&ruled, sql).await, run(&plain, sql).await, "{sql}");
        let plan = run(&ruled, &format!("EXPLAIN {sql}")).await;
        assert_eq!(
            plan.contains("ShortcutAggregateExec"),
            applies,
            "{sql}\n{plan}"
        );
    }
}
