//! The store conformance suite: every case in `conformance/cases.rs` runs against a real
//! SQLite file and a real PostgreSQL database, so both backends are held to one contract.
//! Test names show the backend: `sqlite::append_assigns_gapless_seq`,
//! `postgres::append_assigns_gapless_seq`.
//!
//! PostgreSQL tests need `DATABASE_URL` (see `chat_store::testing`); `scripts/test.sh`
//! starts a throwaway server. Without it they fail, they never skip.

#[path = "conformance/cases.rs"]
mod cases;
#[path = "conformance/cases_1_1.rs"]
mod cases_1_1;
#[path = "conformance/support.rs"]
mod support;

use std::time::Duration;

use chat_store::testing::{TestDatabase, TestStore};
use chat_store::{Appended, StoreConfig, StoreError};
use support::*;

/// One `#[tokio::test]` per case, for one backend. Cases that need real parallelism run on
/// a multi-thread runtime; the others on the current-thread runtime a server worker uses.
macro_rules! conformance_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            conformance_suite!(@current $open;
                ping_answers,
                open_room_is_idempotent_in_either_order,
                closed_pair_gets_a_new_room,
                close_room_is_idempotent,
                closed_room_refuses_append_but_allows_history_and_mark_seen,
                append_assigns_gapless_seq,
                last_seqs_reports_rooms_with_messages,
                duplicate_append_returns_the_stored_row_without_an_event,
                append_batch_reports_each_message_in_input_order,
                events_are_published_after_commit,
                history_pages,
                unread_counts,
                rooms_of_lists_newest_first,
                mark_seen_marks_only_the_other_members_messages,
                mark_seen_sets_seen_at_once,
                mark_seen_clamps_to_the_last_seq,
                seen_at_is_never_before_sent_at,
                non_member_is_refused_everywhere,
                unknown_room_is_reported_everywhere,
                bodies_are_counted_in_characters,
                database_constraints_back_the_rules,
                corrupt_rows_are_reported,
                reopening_keeps_the_data,
                large_batches_span_several_inserts,
            );
            conformance_suite!(@current_1_1 $open;
                rooms_page_orders_by_activity_and_pages_with_a_cursor,
                received_moves_the_delivered_watermark_forward_only,
                delete_leaves_a_tombstone_and_follows_the_unsend_rules,
                presence_rows_follow_nodes_and_connections,
                erasure_and_retention_leave_tombstones_in_batches,
            );
            conformance_suite!(@multi $open;
                concurrent_open_room_returns_one_room,
                concurrent_appends_to_one_room,
                concurrent_batches_over_shared_rooms,
                concurrent_retries_of_one_message_store_it_once,
            );
        }
    };
    (@current $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $open.await;
                cases::$case(&store).await;
            }
        )*
    };
    (@current_1_1 $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $open.await;
                cases_1_1::$case(&store).await;
            }
        )*
    };
    (@multi $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = $open.await;
                cases::$case(&store).await;
            }
        )*
    };
}

conformance_suite!(sqlite, TestStore::sqlite());
conformance_suite!(postgres, TestStore::postgres());

/// Backend-specific behaviour: where the SQLite file goes and how it is set up.
mod sqlite_only {
    use super::*;

    #[tokio::test]
    async fn creates_the_file_and_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("deeper").join("chat.db");
        let config = StoreConfig::new(&format!("sqlite://{}", path.display())).unwrap();
        let repo = chat_store::open(&config).await.expect("open");
        repo.ping().await.unwrap();
        assert!(path.is_file(), "the database file exists");
    }

    #[tokio::test]
    async fn the_database_is_in_wal_mode() {
        let store = TestStore::sqlite().await;
        let chat_store::Backend::Sqlite { path } = store.config().backend else {
            panic!("not sqlite")
        };
        let mode = tokio::task::spawn_blocking(move || {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct Mode {
                #[diesel(sql_type = diesel::sql_types::Text)]
                journal_mode: String,
            }
            let mut conn =
                diesel::SqliteConnection::establish(path.to_str().unwrap_or_default()).unwrap();
            diesel::sql_query("PRAGMA journal_mode")
                .get_result::<Mode>(&mut conn)
                .map(|m| m.journal_mode)
        })
        .await
        .unwrap();
        assert_eq!(mode.as_deref(), Ok("wal"));
    }
}

/// What a store does when PostgreSQL goes away: retryable errors, never a panic, and
/// recovery when the server is back.
mod postgres_only {
    use super::*;
    use tokio::net::TcpListener;

    #[allow(clippy::unwrap_used)] // a test helper, not a `#[test]` fn (see clippy.toml)
    fn short_timeouts(url: &str) -> StoreConfig {
        let mut config = StoreConfig::new(url).unwrap();
        config.wait_timeout = Duration::from_secs(3);
        config.connect_timeout = Duration::from_secs(3);
        config
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        // A port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = short_timeouts(&format!("postgres://chat:secret@127.0.0.1:{port}/chat"));
        match chat_store::open(&config).await {
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                assert!(e.is_retryable());
                assert!(
                    !e.to_string().contains("secret"),
                    "no password in errors: {e}"
                );
            }
            Ok(_) => panic!("opened a store on a closed port"),
        }
    }

    /// `ready`'s room list is planned for its parameters on every call. PostgreSQL switches a
    /// prepared statement to a cached generic plan after five executions; the one it chose
    /// while the tables were empty (a fresh database, the first connections) merge-joined
    /// and sorted every unseen message of every room for each `ready` once the tables were
    /// full: 16 such queries filled the pool for a minute after a throughput run (issue 11's
    /// stall). Here temporary files are forbidden, so that plan fails instead of spilling.
    #[tokio::test]
    async fn the_room_list_keeps_no_plan_made_for_empty_tables() {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let db = TestDatabase::create().await;
        let mut admin = AsyncPgConnection::establish(db.url()).await.unwrap();
        for setting in ["work_mem = '64kB'", "temp_file_limit = 0"] {
            diesel::sql_query(format!("ALTER DATABASE \"{}\" SET {setting}", db.name()))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let mut config = StoreConfig::new(db.url()).unwrap();
        config.pool_size = 1; // every call on the one connection that caches the plan
        let repo = chat_store::open(&config).await.expect("open");
        for table in ["rooms", "messages"] {
            // No ANALYZE in between: it would throw the cached plans away and hide the bug.
            diesel::sql_query(format!(
                "ALTER TABLE {table} SET (autovacuum_enabled = false)"
            ))
            .execute(&mut admin)
            .await
            .unwrap();
        }
        let room = open(&*repo, "alice", "bob", t(1)).await;
        send(&*repo, &room.id, "bob", "c1", t(2)).await;
        for _ in 0..8 {
            repo.rooms_page(&user("alice"), None, 200).await.unwrap();
        }
        // Another pair's busy room: 200,000 messages nobody has seen.
        diesel::sql_query(
            "INSERT INTO rooms (id, member_a, member_b, created_at, last_seq) \
             VALUES ('busy', 'xavier', 'yolanda', 0, 200000)",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        diesel::sql_query(
            "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
             SELECT 'busy', g, 'xavier', 'c' || g, 'hello', 0 FROM generate_series(1, 200000) g",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        let page = repo
            .rooms_page(&user("alice"), None, 200)
            .await
            .expect("the room list is planned for alice's one room, not the whole table");
        assert_eq!(page.rooms.len(), 1);
        assert_eq!(page.rooms[0].unread, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_connection_is_retryable_and_the_store_recovers() {
        let db = TestDatabase::create().await;
        let url = db.url();
        let upstream = server_addr(url).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let proxy = Proxy::start(listener, upstream);
        let proxied = with_host_port(url, &proxy_addr.to_string());
        let repo = chat_store::open(&short_timeouts(&proxied))
            .await
            .expect("open");
        let room = open(&*repo, "alice", "bob", t(1)).await;
        send(&*repo, &room.id, "alice", "c1", t(2)).await;

        // The network goes: every connection is cut and nothing answers.
        proxy.stop().await;
        let mut rx = repo.events().subscribe();
        match repo
            .append(new_msg(&room.id, "alice", "c2", "lost?"), t(3))
            .await
        {
            Err(e) => assert!(e.is_retryable(), "append: {e:?}"),
            Ok(a) => panic!("appended without a server: {a:?}"),
        }
        match repo.ping().await {
            Err(e) => assert!(e.is_retryable(), "ping: {e:?}"),
            Ok(()) => panic!("ping answered without a server"),
        }
        assert_eq!(
            drain(&mut rx),
            vec![],
            "nothing committed, nothing published"
        );

        // It comes back: the store reconnects, and the retried message gets the next seq.
        let listener = TcpListener::bind(proxy_addr)
            .await
            .unwrap_or_else(|e| panic!("rebind {proxy_addr}: {e}"));
        let proxy = Proxy::start(listener, upstream);
        repo.ping().await.expect("ping after recovery");
        match repo
            .append(new_msg(&room.id, "alice", "c2", "retried"), t(4))
            .await
        {
            Ok(Appended::New(m)) => assert_eq!(m.seq, seq(2)),
            other => panic!("retry: {other:?}"),
        }
        proxy.stop().await;
    }
}
