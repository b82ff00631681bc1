//! Production Kafka settings with real servers: a broker behind TLS (tansu with stunnel in front; see
//! `testkit::broker` for why SASL can be tested only as a refused login), three PostgreSQL clusters and three
//! coordinators. A and B name TLS and the CA in their catalog (`set_broker_settings`) and publish over TLS. C is
//! misconfigured twice and repaired, always by the same subscriber process:
//! 1. SASL_SSL with SCRAM credentials in its properties file: the broker refuses the login;
//! 2. plain TLS (a catalog change) but a CA in its properties file that did not sign the broker's certificate:
//!    the handshake fails;
//! 3. the right CA in the file and `SELECT pg_reload_conf()`: C converges on A's and B's data through a workload.
//!
//! Each refusal shows in C's sources, and nothing is applied while C cannot read. Bad settings are refused with
//! SQLSTATE 22023 and change nothing; the status shows the settings in force, secrets redacted.
//!
//! The same for NATS JetStream: a `nats-server` that takes only TLS connections logging in with a user and
//! password; C first presents a wrong password, then a CA that did not sign the server's certificate, then the
//! right ones, all picked up on reload. NATS refuses Kafka's keys, more than one login, and `kafka://` sources.
//! Token and NKey logins are each refused when wrong and publish when right.

use std::time::Duration;

use rand::SeedableRng;
use testkit::broker::Broker;
use testkit::federation::Federation;
use testkit::nats::NatsServer;
use testkit::seed::*;

const SECRET: &str = "scram-secret-5521";

fn write_properties(fed: &Federation, index: usize, text: &str) {
    std::fs::write(fed.clusters[index].data_dir.join("broker.properties"), text).unwrap();
}

fn set_settings(client: &mut postgres::Client, settings: serde_json::Value) -> serde_json::Value {
    client.query_one("SELECT pgtrickle.set_broker_settings($1)", &[&settings]).unwrap().get(0)
}

/// The SQLSTATE and HINT of a refused call.
fn refusal(client: &mut postgres::Client, sql: &str) -> (String, String) {
    let error = client.batch_execute(sql).expect_err(sql);
    let db = error.as_db_error().unwrap_or_else(|| panic!("{sql}: {error}"));
    (db.code().code().to_string(), db.hint().unwrap_or_default().to_string())
}

/// Each statement is refused with 22023 and a HINT that mentions the given text, and the settings stay as they were.
fn refused_changing_nothing(c: &mut postgres::Client, cases: &[(&str, &str)]) {
    let before = stored_settings(c);
    for (sql, hint_mentions) in cases {
        let (code, hint) = refusal(c, sql);
        assert_eq!(code, "22023", "{sql}");
        assert!(hint.contains(hint_mentions), "{sql}: hint {hint:?}");
    }
    assert_eq!(stored_settings(c), before, "a refused call changed the settings");
}

fn stored_settings(client: &mut postgres::Client) -> String {
    client.query_one("SELECT broker_settings::text FROM pgtrickle.pgt_federation", &[]).unwrap().get(0)
}

fn subscriber_pid(c: &mut postgres::Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_trickle subscriber'", &[])
        .unwrap()
        .map(|row| row.get(0))
}

/// Waits until every source of C shows `expected` in its detail, and checks that C applied nothing.
fn refused_and_nothing_applied(fed: &Federation, c: &mut postgres::Client, expected: &str) {
    refused_with_all(fed, c, &[expected])
}

/// The same with every one of `expected` in the detail.
fn refused_with_all(fed: &Federation, c: &mut postgres::Client, expected: &[&str]) {
    let shown = testkit::wait_for(Duration::from_secs(60), || {
        let details: Vec<String> = c
            .query("SELECT coalesce(detail, '') FROM pgtrickle.federation_sources", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        (!details.is_empty() && details.iter().all(|d| expected.iter().all(|e| d.contains(e)))).then_some(())
    });
    assert!(
        shown.is_some(),
        "C's sources never showed {expected:?}:\n{}\nC log:\n{}",
        sources_view(c),
        tail(&fed.clusters[2].log())
    );
    let applied: i64 = c.query_one("SELECT count(*) FROM dashboard", &[]).unwrap().get(0);
    assert_eq!(applied, 0, "C applied rows without reading the broker");
    let batches: i64 = c
        .query_one("SELECT coalesce(sum(applied_seq), 0)::bigint FROM pgtrickle.federation_sources", &[])
        .unwrap()
        .get(0);
    assert_eq!(batches, 0, "C applied batches without reading the broker");
}

#[test]
fn tls_settings_and_credentials_take_effect_without_a_restart() {
    let broker = Broker::start_tls().expect("TLS broker");
    let (ca, other_ca) = (broker.ca_file(), broker.other_ca_file());
    let fed = Federation::start_with(broker, 3, &["pg_trickle.broker_properties_file=broker.properties"])
        .expect("federation");
    let tls = serde_json::json!({"security.protocol": "SSL", "ssl.ca.location": ca.to_str().unwrap()});
    for index in 0..2 {
        write_properties(&fed, index, "# nothing secret on this server\n");
        let shown = set_settings(&mut fed.connect(index).unwrap(), tls.clone());
        assert_eq!(shown["security.protocol"], "SSL", "{shown}");
        assert_eq!(shown["bootstrap.servers"], fed.broker.address(), "{shown}");
    }
    let mut c = fed.connect(2).unwrap();
    write_properties(
        &fed,
        2,
        &format!("sasl.mechanism = SCRAM-SHA-512\nsasl.username = cluster_c\nsasl.password = {SECRET}\n"),
    );
    let shown = set_settings(
        &mut c,
        serde_json::json!({"security.protocol": "SASL_SSL", "ssl.ca.location": ca.to_str().unwrap()}),
    );
    assert_eq!(shown["sasl.password"], "********", "the secret is shown: {shown}");
    assert_eq!(shown["sasl.username"], "cluster_c", "{shown}");

    // Refused settings change nothing.
    refused_changing_nothing(
        &mut c,
        &[
            ("SELECT pgtrickle.set_broker_settings('{\"sasl.password\": \"x\"}')", "broker_properties_file"),
            ("SELECT pgtrickle.set_broker_settings('{\"enable.idempotence\": false}')", "Leave it out"),
            ("SELECT pgtrickle.set_broker_settings('{\"no.such.property\": \"1\"}')", "CONFIGURATION.md"),
            // sasl.username is in C's properties file already.
            ("SELECT pgtrickle.set_broker_settings('{\"sasl.username\": \"other\"}')", "Keep each key in one place"),
            ("SELECT pgtrickle.set_broker_settings('[1, 2]')", "set_broker_settings"),
            ("SELECT pgtrickle.set_broker_settings(topic_partitions => 0)", "one partition"),
        ],
    );
    let (mut a, mut b) = setup_sources(&fed);
    create_dashboard(&mut c, fed.backend());
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    workload(&mut a, &mut b, &mut rng, 30);

    // 1. The broker refuses C's login.
    refused_and_nothing_applied(&fed, &mut c, "refused this cluster's connection");
    let pid = subscriber_pid(&mut c).expect("C's subscriber runs");
    let status = c
        .query_one(
            "SELECT broker_settings::text, properties_file, broker_error FROM pgtrickle.federation_status()",
            &[],
        )
        .unwrap();
    let shown: String = status.get(0);
    assert!(!shown.contains(SECRET) && shown.contains("\"sasl.password\": \"********\""), "{shown}");
    assert_eq!(status.get::<_, Option<String>>(1).as_deref(), Some("broker.properties"));
    assert_eq!(status.get::<_, Option<String>>(2), None);

    // 2. Plain TLS now (the catalog), but the file names a CA that did not sign the broker's certificate.
    write_properties(&fed, 2, &format!("ssl.ca.location = {}\n", other_ca.display()));
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    set_settings(&mut c, serde_json::json!({"security.protocol": "SSL"}));
    refused_and_nothing_applied(&fed, &mut c, "certificate verify failed");

    // 3. The right CA: the same worker reads the file again on reload and C converges.
    write_properties(&fed, 2, &format!("ssl.ca.location = {}\n", ca.display()));
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    workload(&mut a, &mut b, &mut rng, 30);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    check_apply_log(&mut c);
    assert_eq!(subscriber_pid(&mut c), Some(pid), "the subscriber was restarted instead of reloading");
    let rows: i64 = c.query_one("SELECT count(*) FROM dashboard", &[]).unwrap().get(0);
    assert!(rows > 0, "nothing flowed");
}

#[test]
fn nats_login_and_tls_take_effect_without_a_restart() {
    const PASSWORD: &str = "nats-secret-8812";
    let server = NatsServer::start_secure("pgt", PASSWORD).expect("secure NATS server");
    let (ca, other_ca) = (server.ca_file(), server.other_ca_file());
    let fed = Federation::start_with(server, 3, &["pg_trickle.broker_properties_file=broker.properties"])
        .expect("federation");
    let tls = serde_json::json!({"tls.required": true, "tls.ca.file": ca.to_str().unwrap()});
    for index in 0..2 {
        write_properties(&fed, index, &format!("user = pgt\npassword = {PASSWORD}\n"));
        let shown = set_settings(&mut fed.connect(index).unwrap(), tls.clone());
        assert_eq!(shown["tls.required"], "true", "{shown}");
        assert_eq!(shown["password"], "********", "the secret is shown: {shown}");
        assert_eq!(shown["servers"], fed.broker.address(), "{shown}");
    }
    let mut c = fed.connect(2).unwrap();
    write_properties(&fed, 2, "user = pgt\npassword = wrong\n");
    set_settings(&mut c, tls.clone());

    // Refused settings and sources change nothing.
    refused_changing_nothing(
        &mut c,
        &[
            ("SELECT pgtrickle.set_broker_settings('{\"security.protocol\": \"SSL\"}')", "NATS keys"),
            ("SELECT pgtrickle.set_broker_settings('{\"token\": \"x\"}')", "broker_properties_file"),
            ("SELECT pgtrickle.set_broker_settings('{\"tls.required\": \"maybe\"}')", "true or false"),
            // C's file has user and password already: a token too would be two logins.
            ("SELECT pgtrickle.set_broker_settings('{\"nkey.seed\": \"SU\"}')", "broker_properties_file"),
            ("SELECT pgtrickle.set_broker_settings(topic_partitions => 3)", "topic_partitions => 1"),
            (
                "SELECT pgtrickle.create_federated_stream_table('d', 'SELECT 1', \
             ARRAY['kafka://coordinator/cluster_a/order_agg'])",
                "nats://coordinator/cluster_a/",
            ),
        ],
    );
    let (mut a, mut b) = setup_sources(&fed);
    create_dashboard(&mut c, fed.backend());
    let mut rng = rand::rngs::StdRng::seed_from_u64(78);
    workload(&mut a, &mut b, &mut rng, 30);

    // 1. The server refuses C's password.
    refused_and_nothing_applied(&fed, &mut c, "refused this cluster's connection: authorization violation");
    let pid = subscriber_pid(&mut c).expect("C's subscriber runs");

    // 2. The right password, but a CA that did not sign the server's certificate.
    // (The CA first: at no moment are both right.)
    set_settings(&mut c, serde_json::json!({"tls.required": true, "tls.ca.file": other_ca.to_str().unwrap()}));
    write_properties(&fed, 2, &format!("user = pgt\npassword = {PASSWORD}\n"));
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    refused_with_all(&fed, &mut c, &["refused this cluster's connection", "UnknownIssuer"]);

    // 3. The right CA: C converges, with the same worker.
    set_settings(&mut c, tls);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    workload(&mut a, &mut b, &mut rng, 30);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    check_apply_log(&mut c);
    assert_eq!(subscriber_pid(&mut c), Some(pid), "the subscriber was restarted instead of reloading");
}

/// Token and NKey logins to NATS, each with a one-cluster federation: a wrong login shows as the server's refusal
/// on the publication; the right one, after a reload, publishes.
#[test]
fn nats_token_and_nkey_logins() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let seed = |pair: &nkeys::KeyPair| pair.seed().expect("a seed");
    for (login, config, good, bad) in [
        (
            "token",
            "authorization { token: \"tok-5150\" }".to_string(),
            "token = tok-5150\n".to_string(),
            "token = not-it\n".to_string(),
        ),
        (
            "nkey",
            format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}", user.public_key()),
            format!("nkey.seed = {}\n", seed(&user)),
            format!("nkey.seed = {}\n", seed(&stranger)),
        ),
    ] {
        let server = NatsServer::start_with_config(&config).expect("nats-server");
        let fed = Federation::start_with(server, 1, &["pg_trickle.broker_properties_file=broker.properties"])
            .expect("federation");
        write_properties(&fed, 0, &bad);
        let mut a = fed.connect(0).unwrap();
        a.batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
             SELECT pgtrickle.create_stream_table('t_st', 'SELECT id FROM t', schedule => '200ms');
             SELECT pgtrickle.publish_stream_table('t_st');",
        )
        .unwrap();
        let publication = |a: &mut postgres::Client| -> (i64, Option<String>) {
            let row = a.query_one("SELECT published_seq, last_error FROM pgtrickle.pgt_publications", &[]).unwrap();
            (row.get(0), row.get(1))
        };
        // What existed when it was published counts as published (consumers start from a snapshot); a change
        // after it is a batch the publisher must send.
        let (before, _) = publication(&mut a);
        a.batch_execute("INSERT INTO t VALUES (2)").unwrap();
        let refused = testkit::wait_for(Duration::from_secs(60), || {
            let (seq, error) = publication(&mut a);
            (seq == before && error.is_some_and(|e| e.contains("refused this cluster's connection"))).then_some(())
        });
        assert!(refused.is_some(), "{login}: the wrong login was not refused: {:?}", publication(&mut a));
        write_properties(&fed, 0, &good);
        a.batch_execute("SELECT pg_reload_conf()").unwrap();
        let published = testkit::wait_for(Duration::from_secs(60), || {
            let (seq, error) = publication(&mut a);
            (seq > before && error.is_none()).then_some(())
        });
        assert!(published.is_some(), "{login}: nothing published after the fix: {:?}", publication(&mut a));
    }
}
