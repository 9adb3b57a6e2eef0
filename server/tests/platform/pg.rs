//! The embedded PostgreSQL launcher against the machine's real PostgreSQL binaries.

use crate::common;

use ifp_server::db::pg::PgCluster;

async fn count_rows(cluster: &PgCluster) -> i64 {
    let pool = cluster.pool(2).await.unwrap();
    ifp_server::db::pg::migrate(&pool).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from api_token")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn cluster_starts_migrates_stops_and_is_reused() {
    let tmp = common::open_tempdir("ifp-pg-life-");
    let dir = tmp.path().join("pg");

    let mut cluster = PgCluster::start(&dir).unwrap();
    assert!(dir.join("PG_VERSION").exists());
    assert!(dir.join(".s.PGSQL.5432").exists(), "socket in the data dir");
    assert_eq!(count_rows(&cluster).await, 0);
    let pool = cluster.pool(2).await.unwrap();
    sqlx::query(
        "insert into api_token (id, name, token_hash) values (gen_random_uuid(), 'a', 'h')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    cluster.stop().unwrap();
    assert!(!dir.join("postmaster.pid").exists());

    // Restart: same cluster, data kept, migrations are a no-op.
    let mut cluster = PgCluster::start(&dir).unwrap();
    assert_eq!(count_rows(&cluster).await, 1);
    cluster.stop().unwrap();

    // A crash leaves a postmaster.pid naming a dead process, or (after a reboot) a PID now
    // used by something else: the next start clears it.
    for pid in [999_999, std::process::id()] {
        std::fs::write(dir.join("postmaster.pid"), format!("{pid}\n/nonexistent\n")).unwrap();
        let mut cluster = PgCluster::start(&dir).unwrap();
        assert_eq!(count_rows(&cluster).await, 1);
        cluster.stop().unwrap();
    }
    let cluster = PgCluster::start(&dir).unwrap();

    // While it runs, a second owner is refused, and a client attaches without stopping it.
    assert!(PgCluster::start(&dir).is_err());
    let attached = PgCluster::open(&dir).unwrap();
    assert!(!attached.owned());
    assert_eq!(count_rows(&attached).await, 1);
    drop(attached);
    assert_eq!(count_rows(&cluster).await, 1, "still running");

    // A killed server leaves its postmaster running: the next start takes over.
    cluster.abandon();
    let mut cluster = PgCluster::start(&dir).unwrap();
    assert_eq!(count_rows(&cluster).await, 1);
    cluster.stop().unwrap();
}

#[test]
fn missing_binaries_say_what_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let e = ifp_server::db::pg::find_binaries_in(
        Some(empty.path().as_os_str()),
        &empty.path().join("nope"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("initdb") && e.contains("apt-get install postgresql"),
        "{e}"
    );
    assert!(e.contains("DATABASE_URL"), "{e}");
    assert!(
        ifp_server::db::pg::find_binaries().is_ok(),
        "these tests need PostgreSQL installed"
    );
}
