//! Change capture across real transactions: buffers are pruned once every consumer has the rows,
//! changes committed by other sessions while a refresh runs are neither lost nor applied twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testkit::Clusters;

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[test]
fn buffers_are_pruned_once_every_consumer_has_the_rows() {
    let (_clusters, mut client) = Clusters::one_with_extension().expect("start cluster");
    client
        .batch_execute(
            "CREATE TABLE events (id int, kind text);
             SELECT pgtrickle.create_stream_table('by_kind', 'SELECT kind, count(*) AS n FROM events GROUP BY kind', schedule => 'manual');
             SELECT pgtrickle.create_stream_table('recent', 'SELECT id, kind FROM events WHERE id > 10', schedule => 'manual');",
        )
        .unwrap();
    let buffer: String = client
        .query_one("SELECT 'pgtrickle_changes.' || quote_ident(buffer_name) FROM pgtrickle.pgt_change_buffers b JOIN pg_class c ON c.oid = b.source_relid WHERE c.relname = 'events'", &[])
        .unwrap()
        .get(0);
    // Statement-level capture: one trigger per event, FOR EACH STATEMENT (tgtype bit 0 clear).
    let row_level = count(
        &mut client,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal AND tgtype & 1 = 1",
    );
    assert_eq!(row_level, 0);
    client.batch_execute("INSERT INTO events SELECT g, 'k' || (g % 3) FROM generate_series(1, 50) g").unwrap();
    assert_eq!(count(&mut client, &format!("SELECT count(*) FROM {buffer}")), 50);
    client.batch_execute("SELECT pgtrickle.refresh_stream_table('by_kind')").unwrap();
    assert_eq!(count(&mut client, &format!("SELECT count(*) FROM {buffer}")), 50, "recent has not read them yet");
    client.batch_execute("SELECT pgtrickle.refresh_stream_table('recent')").unwrap();
    assert_eq!(count(&mut client, &format!("SELECT count(*) FROM {buffer}")), 0, "both consumers have them");
}

#[test]
fn concurrent_writers_during_refreshes_lose_and_duplicate_nothing() {
    let (clusters, mut client) = Clusters::one_with_extension().expect("start cluster");
    client
        .batch_execute(
            "CREATE TABLE ticks (writer int, n int);
             SELECT pgtrickle.create_stream_table('per_writer', 'SELECT writer, count(*) AS c, sum(n) AS s FROM ticks GROUP BY writer', schedule => 'manual');",
        )
        .unwrap();
    // Writers commit small transactions (some held open across a refresh) while refreshes run. Each writer
    // publishes the id of its open transaction (0: none) once it has inserted and until it commits, so the test
    // can tell a refresh that ran entirely while a writing transaction was open.
    let open: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let conninfo = clusters[0].conninfo("postgres");
            let open = open.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                for i in 0..200 {
                    let mut tx = c.transaction().unwrap();
                    tx.execute("INSERT INTO ticks VALUES ($1, $2)", &[&writer, &i]).unwrap();
                    open[writer as usize].store(writer as u64 * 1000 + i as u64 + 1, Ordering::SeqCst);
                    if i % 20 == 0 {
                        std::thread::sleep(Duration::from_millis(30));
                    }
                    open[writer as usize].store(0, Ordering::SeqCst);
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    let mut overlapped = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let before: Vec<u64> = open.iter().map(|o| o.load(Ordering::SeqCst)).collect();
        client.batch_execute("SELECT pgtrickle.refresh_stream_table('per_writer')").unwrap();
        if open.iter().zip(&before).any(|(o, b)| *b != 0 && o.load(Ordering::SeqCst) == *b) {
            overlapped += 1;
        }
    }
    for writer in writers {
        writer.join().unwrap();
    }
    println!("{overlapped} refreshes ran while a writing transaction stayed open");
    assert!(overlapped >= 1, "no refresh overlapped an open writing transaction: the test exercised nothing");
    client.batch_execute("SELECT pgtrickle.refresh_stream_table('per_writer')").unwrap();
    let wrong = count(
        &mut client,
        "SELECT count(*) FROM ((SELECT writer, c, s FROM per_writer EXCEPT ALL SELECT writer, count(*), sum(n) FROM ticks GROUP BY writer) \
         UNION ALL (SELECT writer, count(*), sum(n) FROM ticks GROUP BY writer EXCEPT ALL SELECT writer, c, s FROM per_writer)) d",
    );
    assert_eq!(wrong, 0, "stream table differs from its query after concurrent writes");
    assert_eq!(count(&mut client, "SELECT sum(c)::int8 FROM per_writer"), 600);
}
