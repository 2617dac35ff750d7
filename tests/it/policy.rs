//! Role policy: what a role may not read is invisible in every listing and refused
//! with 42501 in every query path; row caps stop huge results.

use crate::harness::{
    Gateway, GatewayConfig, column, connect_plain, count, db_meta_walk, psql_command, sqlstate,
    stdout,
};

const ROLES: &str = "\n[[auth.users]]\nname = \"zonesonly\"\npassword = \"z\"\nroles = [\"zone_reader\"]\n\n\
    [[auth.users]]\nname = \"nobody\"\npassword = \"n\"\n\n\
    [[roles]]\nname = \"zone_reader\"\nread = [\"nyc.zones\"]\nrow_limit = 100\n";

async fn gateway() -> Gateway {
    GatewayConfig::demo().extra(ROLES).start().await
}

async fn connect(gw: &Gateway, user: &str, password: &str) -> tokio_postgres::Client {
    connect_plain(gw.port, user, password).await.unwrap()
}

async fn nyc_tables(client: &tokio_postgres::Client) -> (Vec<String>, Vec<String>) {
    let info = column(
        client,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'nyc' ORDER BY 1",
    )
    .await;
    let pg_class = column(
        client,
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'nyc' ORDER BY 1",
    )
    .await;
    (info, pg_class)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_see_only_what_they_may_read() {
    let gw = gateway().await;
    let all = vec!["trips".to_string(), "vendors".into(), "zones".into()];
    let demo = gw.connect().await;
    assert_eq!(nyc_tables(&demo).await, (all.clone(), all));

    let zones = connect(&gw, "zonesonly", "z").await;
    let only = vec!["zones".to_string()];
    assert_eq!(nyc_tables(&zones).await, (only.clone(), only));

    let nobody = connect(&gw, "nobody", "n").await;
    assert_eq!(nyc_tables(&nobody).await, (vec![], vec![]));
    let schemas = column(
        &nobody,
        "SELECT nspname FROM pg_catalog.pg_namespace ORDER BY 1",
    )
    .await;
    assert!(!schemas.contains(&"nyc".to_string()), "{schemas:?}");

    // psql's \dt as the restricted user.
    let out = psql_command(gw.port, "sluice", "zonesonly")
        .args(["-c", "\\dt nyc.*"])
        .env("PGPASSWORD", "z")
        .output()
        .await
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("zones") && !text.contains("trips"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_tables_are_refused_with_42501_on_every_path() {
    let gw = gateway().await;
    let zones = connect(&gw, "zonesonly", "z").await;
    let err = zones
        .simple_query("SELECT count(*) FROM nyc.trips")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let text = format!("{err:?}");
    assert!(
        text.contains("permission denied for table nyc.trips"),
        "{text}"
    );
    // Extended protocol (prepared statement) and subqueries too.
    let err = zones
        .prepare("SELECT * FROM nyc.trips WHERE trip_id = $1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = zones
        .query("SELECT * FROM nyc.zones WHERE location_id IN (SELECT pickup_location_id FROM nyc.trips)", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // What is granted works.
    assert_eq!(count(&zones, "nyc.zones").await.unwrap(), 265);
    // Unknown tables are still "does not exist".
    let err = zones
        .simple_query("SELECT * FROM nyc.nope")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_caps_stop_huge_results() {
    let gw = gateway().await;
    let zones = connect(&gw, "zonesonly", "z").await;
    let rows = zones
        .query("SELECT * FROM nyc.zones LIMIT 100", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    let err = zones
        .query("SELECT * FROM nyc.zones", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "54000");
    // The session carries on.
    assert_eq!(zones.query("SELECT 1", &[]).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_get_tables_follows_the_role() {
    let gw = gateway().await;
    let out = db_meta_walk(&gw, "zonesonly", "z").await;
    // Steps on nyc.trips fail for this role (that is the point); the listing must
    // show zones only.
    let text = stdout(&out);
    let tables: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("table=nyc."))
        .collect();
    assert!(!tables.is_empty(), "{text}");
    assert!(
        tables.iter().all(|l| l.starts_with("table=nyc.zones")),
        "{tables:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_reload_without_dropping_sessions() {
    let gw = gateway().await;
    let before = connect(&gw, "zonesonly", "z").await;
    assert_eq!(nyc_tables(&before).await.0, vec!["zones"]);

    // An invalid file is rejected whole: the running rules stay.
    let path = gw.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replace(
            "read = [\"nyc.zones\"]",
            "read = [\"nyc.zones\"]\nbogus_key = 1",
        ),
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        nyc_tables(&connect(&gw, "zonesonly", "z").await).await.0,
        vec!["zones"]
    );

    // A valid change applies to new sessions.
    std::fs::write(
        &path,
        original.replace(
            "read = [\"nyc.zones\"]",
            "read = [\"nyc.zones\", \"nyc.vendors\"]",
        ),
    )
    .unwrap();
    let mut seen = vec![];
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        seen = nyc_tables(&connect(&gw, "zonesonly", "z").await).await.0;
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, vec!["vendors", "zones"]);
    // The session opened before the reload is still there, with its rules.
    assert_eq!(nyc_tables(&before).await.0, vec!["zones"]);
}
