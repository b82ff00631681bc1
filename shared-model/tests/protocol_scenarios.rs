//! Scenario tests of the protocol machines, written as data (`shared-model/testdata/<machine>/*.txt`, the way
//! etcd-io/raft keeps its `testdata/`): each input line is fed to the machine, and the actions it queued must be
//! exactly the `>` lines below it. The format is in `testdata/producer/README.md`.

use std::path::Path;

use shared_model::protocol::producer::{Action, Input, LocalStream, LogView, Producer, SentCopy};
use shared_model::{BatchKind, StreamId};

fn stream(text: &str) -> StreamId {
    StreamId::parse(text).unwrap_or_else(|e| panic!("stream {text:?}: {e}"))
}

/// `key=value` of a word, or None.
fn value<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn number(words: &[&str], key: &str) -> u64 {
    value(words, key).unwrap_or_else(|| panic!("{key}= missing in {words:?}")).parse().expect("a number")
}

/// `ok` → Ok(()), `err=TEXT…` → Err(TEXT…) (the rest of the line).
fn outcome(line: &str) -> Result<(), String> {
    match line.split_once(" err=") {
        Some((_, error)) => Err(error.to_string()),
        None => Ok(()),
    }
}

fn kind(word: &str) -> BatchKind {
    match word {
        "delta" => BatchKind::Delta,
        "snapshot" => BatchKind::Snapshot,
        other => panic!("unknown kind {other:?}"),
    }
}

fn parse_input(line: &str) -> Input {
    let words: Vec<&str> = line.split_whitespace().collect();
    let target = || stream(words[1]);
    match words[0] {
        "round" => {
            let mut parts = line.split('|');
            let head: Vec<&str> = parts.next().unwrap().split_whitespace().collect();
            let streams = parts
                .map(|part| {
                    let w: Vec<&str> = part.split_whitespace().collect();
                    LocalStream {
                        stream: stream(w[0]),
                        published_seq: number(&w, "p"),
                        last_batch_seq: number(&w, "last"),
                        unpublished_snapshot: w.contains(&"snapshot"),
                        columns_changed: w.contains(&"changed"),
                    }
                })
                .collect();
            Input::Round { now_ms: number(&head, "now"), streams }
        }
        "republished" => Input::Republished { stream: target(), result: outcome(line) },
        "frontier" => Input::Frontier {
            stream: target(),
            result: outcome(line).map(|()| LogView {
                committed_seq: number(&words, "committed"),
                pending_reinit: words.contains(&"reinit"),
            }),
        },
        "snapshot-written" => {
            Input::SnapshotWritten { stream: target(), result: outcome(line).map(|()| number(&words, "last")) }
        }
        "sent" => Input::Sent {
            stream: target(),
            seq: number(&words, "seq"),
            result: outcome(line).map(|()| SentCopy { kind: kind(words[3]), offset: number(&words, "offset") as i64 }),
        },
        "proposed" => Input::Proposed { stream: target(), result: outcome(line) },
        "marked" => Input::Marked { stream: target(), seq: number(&words, "seq"), result: outcome(line) },
        other => panic!("unknown input {other:?}"),
    }
}

fn render(action: &Action) -> String {
    match action {
        Action::Republish { stream } => format!("republish {stream}"),
        Action::FetchFrontier { stream, after_seq } => format!("fetch {stream} after={after_seq}"),
        Action::MarkPublished { stream, seq } => format!("mark {stream} seq={seq}"),
        Action::WriteSnapshot { stream } => format!("write-snapshot {stream}"),
        Action::Send { stream, seq } => format!("send {stream} seq={seq}"),
        Action::Propose { stream, advances } => {
            let list: Vec<String> = advances
                .iter()
                .map(|a| {
                    let kind = if a.kind == BatchKind::Snapshot { "snapshot" } else { "delta" };
                    format!("{}:{kind}@{}", a.seq, a.position.offset)
                })
                .collect();
            format!("propose {stream} {}", list.join(" "))
        }
        Action::ReportError { stream, error } => format!("error {stream}: {error}"),
    }
}

fn matches(expected: &str, actual: &str) -> bool {
    match expected.strip_suffix("...") {
        Some(prefix) => actual.starts_with(prefix),
        None => expected == actual,
    }
}

/// Runs one scenario file; returns the number of steps checked.
fn run_producer_scenario(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();
    let mut machine = Producer::new();
    let mut queued: Vec<String> = Vec::new();
    let mut steps = 0;
    let flush = |queued: &mut Vec<String>, line_no: usize| {
        assert!(queued.is_empty(), "{name}:{line_no}: actions not listed in the scenario: {queued:?}");
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(expected) = line.strip_prefix('>') {
            let expected = expected.trim();
            assert!(!queued.is_empty(), "{name}:{line_no}: expected `{expected}`, but nothing more was queued");
            let actual = queued.remove(0);
            assert!(matches(expected, &actual), "{name}:{line_no}: expected `{expected}`, got `{actual}`");
            continue;
        }
        flush(&mut queued, line_no);
        machine.step(parse_input(line));
        steps += 1;
        while let Some(action) = machine.next_action() {
            queued.push(render(&action));
        }
    }
    flush(&mut queued, text.lines().count());
    steps
}

#[test]
fn producer_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/producer");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "scenario files missing in {}", dir.display());
    for file in &files {
        let steps = run_producer_scenario(file);
        assert!(steps > 0, "{} has no steps", file.display());
    }
}
