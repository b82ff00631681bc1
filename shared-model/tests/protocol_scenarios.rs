//! Scenario tests of the protocol machines, written as data (`shared-model/testdata/<machine>/*.txt`, the way
//! etcd-io/raft keeps its `testdata/`): each input line is fed to the machine, and the actions it queued must be
//! exactly the `>` lines below it. The format is in `testdata/producer/README.md`.

use std::path::Path;

use shared_model::envelope::Batch;
use shared_model::frontier::{Frontier, FrontierPoint};
use shared_model::protocol::consumer::{self, AnswerError, Consumer, FrontierAnswer, Message, SourceConfig};
use shared_model::protocol::producer::{Action, Input, LocalStream, LogView, Producer, SentCopy};
use shared_model::{BatchKind, BrokerPosition, Consistency, MessageKey, StreamId};

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
                        proposed_seq: value(&w, "proposed").map_or(number(&w, "p"), |v| v.parse().expect("a number")),
                        proposed_epoch: value(&w, "pepoch").map_or(1, |v| v.parse().expect("a number")),
                        last_batch_seq: number(&w, "last"),
                        unpublished_snapshot: w.contains(&"snapshot"),
                        columns_changed: w.contains(&"changed"),
                    }
                })
                .collect();
            let producer_epoch = value(&head, "epoch").map_or(1, |v| v.parse().expect("a number"));
            Input::Round { now_ms: number(&head, "now"), producer_epoch, streams }
        }
        "republished" => Input::Republished { stream: target(), result: outcome(line) },
        "frontier" => Input::Frontier {
            stream: target(),
            result: outcome(line).map(|()| LogView {
                committed_seq: number(&words, "committed"),
                committed_epoch: value(&words, "epoch").map_or(1, |v| v.parse().expect("a number")),
                pending_reinit: words.contains(&"reinit"),
            }),
        },
        "restarted" => {
            Input::Restarted { stream: target(), committed_seq: number(&words, "committed"), result: outcome(line) }
        }
        "snapshot-written" => {
            Input::SnapshotWritten { stream: target(), result: outcome(line).map(|()| number(&words, "last")) }
        }
        "sent" => Input::Sent {
            stream: target(),
            seq: number(&words, "seq"),
            result: outcome(line).map(|()| SentCopy {
                kind: kind(words[3]),
                offset: value(&words, "offset").expect("offset=").parse().expect("an offset"),
            }),
        },
        "proposal-recorded" => {
            Input::ProposalRecorded { stream: target(), seq: number(&words, "seq"), result: outcome(line) }
        }
        "proposed" => Input::Proposed { stream: target(), result: outcome(line) },
        "marked" => Input::Marked { stream: target(), seq: number(&words, "seq"), result: outcome(line) },
        "broker-lost" => Input::BrokerLost,
        other => panic!("unknown input {other:?}"),
    }
}

fn render(action: &Action) -> String {
    match action {
        Action::Republish { stream } => format!("republish {stream}"),
        Action::FetchFrontier { stream, after_seq } => format!("fetch {stream} after={after_seq}"),
        Action::MarkPublished { stream, seq } => format!("mark {stream} seq={seq}"),
        Action::WriteSnapshot { stream } => format!("write-snapshot {stream}"),
        Action::Restart { stream, committed_seq } => format!("restart {stream} committed={committed_seq}"),
        Action::Send { stream, seq } => format!("send {stream} seq={seq}"),
        Action::RecordProposal { stream, seq, producer_epoch: 1 } => format!("record-proposal {stream} seq={seq}"),
        Action::RecordProposal { stream, seq, producer_epoch } => {
            format!("record-proposal {stream} seq={seq} epoch={producer_epoch}")
        }
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

/// `...` stands for any text: the parts between must appear in order, the first at the start, the last at the
/// end unless the line ends in `...`.
fn matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("...").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let Some(mut rest) = actual.strip_prefix(parts[0]) else { return false };
    for (i, part) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A machine a scenario drives: feed one input line, drain the queued actions as text.
trait Machine {
    fn feed(&mut self, line: &str);
    fn drain(&mut self) -> Vec<String>;
}

impl Machine for Producer {
    fn feed(&mut self, line: &str) {
        self.step(parse_input(line));
    }
    fn drain(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_action()).map(|a| render(&a)).collect()
    }
}

/// Runs one scenario file; returns the number of steps checked.
fn run_scenario(path: &Path, machine: &mut dyn Machine) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();
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
        machine.feed(line);
        steps += 1;
        queued.extend(machine.drain());
    }
    flush(&mut queued, text.lines().count());
    steps
}

fn scenario_files(machine: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(machine);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

// ----- consumer -------------------------------------------------------------------------------------------------

/// The federation's key in every consumer scenario (`forged` messages are signed with another).
fn scenario_key() -> MessageKey {
    MessageKey::from_bytes([1; 32])
}

fn parse_consumer_input(line: &str) -> consumer::Input {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut parts = line.split('|');
    let head: Vec<&str> = parts.next().unwrap().split_whitespace().collect();
    let items: Vec<Vec<&str>> =
        parts.map(|p| p.split_whitespace().collect()).filter(|w: &Vec<&str>| !w.is_empty()).collect();
    match words[0] {
        "round" => consumer::Input::Round {
            now_ms: number(&head, "now"),
            wall_ms: 0,
            connected: !head.contains(&"disconnected"),
            key: scenario_key(),
            sources: items
                .iter()
                .map(|w| SourceConfig {
                    stream: stream(w[0]),
                    table: number(w, "table") as i64,
                    consistency: if w.contains(&"causal") { Consistency::Causal } else { Consistency::Eventual },
                    applied_seq: number(w, "applied"),
                    applied_offset: value(w, "offset").map(|o| o.parse().unwrap()),
                    // inc=none: not bound yet; default incarnation 1.
                    incarnation: match value(w, "inc") {
                        Some("none") => None,
                        Some(i) => Some(i.parse().unwrap()),
                        None => Some(1),
                    },
                })
                .collect(),
        },
        "assigned" => consumer::Input::Assigned { result: outcome(line) },
        "polled" => consumer::Input::Polled {
            messages: items
                .iter()
                .map(|w| {
                    let seq = number(w, "seq");
                    let batch = Batch {
                        // claims=STREAM: the envelope names another stream than the topic it is on.
                        stream: value(w, "claims").map_or_else(|| stream(w[0]), stream),
                        incarnation: value(w, "inc").map_or(1, |i| i.parse().unwrap()),
                        producer_epoch: 1,
                        seq,
                        kind: kind(w[3]),
                        columns: vec![],
                        rows: vec![],
                    };
                    let key = if w.contains(&"forged") { MessageKey::from_bytes([2; 32]) } else { scenario_key() };
                    let payload = batch.encode_chunks(1 << 20, &key).unwrap().remove(0);
                    Message { stream: stream(w[0]), offset: number(w, "offset") as i64, payload }
                })
                .collect(),
            error: value(&head, "err").map(str::to_string),
            disconnected: head.contains(&"disconnected"),
        },
        "frontiers" => consumer::Input::Frontiers {
            answers: line
                .split('|')
                .skip(1)
                .map(|part| {
                    let w: Vec<&str> = part.split_whitespace().collect();
                    let id = stream(w[0]);
                    if let Some((_, error)) = part.split_once(" err=") {
                        return (id, Err(AnswerError::Unreachable(error.trim().to_string())));
                    }
                    if let Some((_, error)) = part.split_once(" refused=") {
                        return (id, Err(AnswerError::Refused(error.trim().to_string())));
                    }
                    let points: Vec<FrontierPoint> = value(&w, "points")
                        .unwrap_or("")
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let f: Vec<&str> = p.split(':').collect();
                            FrontierPoint {
                                seq: f[0].parse().unwrap(),
                                kind: kind(f[1]),
                                position: BrokerPosition { partition: 0, offset: f[2].parse().unwrap() },
                                at: f[3].parse().unwrap(),
                                proposed_at_unix_ms: 0,
                            }
                        })
                        .collect();
                    let frontier = Frontier::from_parts(number(&w, "after"), 0, false, points).unwrap();
                    let answer = FrontierAnswer {
                        frontier,
                        pending_reinit: w.contains(&"reinit"),
                        as_of: number(&w, "as_of"),
                        incarnation: value(&w, "inc").map_or(1, |i| i.parse().unwrap()),
                    };
                    (id, Ok(answer))
                })
                .collect(),
        },
        "applied" => consumer::Input::Applied {
            table: number(&words, "table") as i64,
            applied: words[2..]
                .iter()
                .filter_map(|w| w.split_once(':'))
                .map(|(s, last)| (stream(s), last.parse().unwrap()))
                .collect(),
            result: match (line.split_once(" blocked="), outcome(line)) {
                (Some((_, reason)), _) => Err(consumer::ApplyFailure::Blocked(reason.to_string())),
                (None, result) => result.map_err(consumer::ApplyFailure::Failed),
            },
        },
        "reinit-requested" => consumer::Input::ReinitRequested { stream: stream(words[1]), result: outcome(line) },
        "reset" => consumer::Input::Reset { stream: stream(words[1]), result: outcome(line) },
        other => panic!("unknown consumer input {other:?}"),
    }
}

fn render_consumer(action: &consumer::Action) -> String {
    use consumer::Action::*;
    match action {
        Assign { positions } => {
            let list: Vec<String> = positions
                .iter()
                .map(|(s, next)| format!("{s}@{}", next.map_or("start".to_string(), |o| o.to_string())))
                .collect();
            format!("assign {}", list.join(" "))
        }
        Poll => "poll".into(),
        FetchFrontiers { after } => {
            let list: Vec<String> = after.iter().map(|(s, a)| format!("{s}>{a}")).collect();
            format!("fetch {}", list.join(" "))
        }
        Apply { table, cut_at, seqs } => {
            let cut = cut_at.map(|c| format!(" cut={c}")).unwrap_or_default();
            let list: Vec<String> = seqs
                .iter()
                .map(|(s, q)| format!("{s}:{}", q.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")))
                .collect();
            format!("apply table={table}{cut} {}", list.join(" "))
        }
        RefreshFederated { table } => format!("refresh table={table}"),
        RequestReinitialize { stream, reason } => format!("reinit {stream}: {reason}"),
        Reset { stream, incarnation, forget, reason } => {
            format!("reset {stream} inc={incarnation}{}: {reason}", if *forget { " forget" } else { "" })
        }
        SetStatus { stream, status } => {
            let log =
                status.log.map(|l| format!(" committed={} lag={}", l.committed_seq, l.lag_batches)).unwrap_or_default();
            let detail = status.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default();
            format!("status {stream} {}{log}{detail}", status.state.as_str())
        }
    }
}

impl Machine for Consumer {
    fn feed(&mut self, line: &str) {
        self.step(parse_consumer_input(line));
    }
    fn drain(&mut self) -> Vec<String> {
        let mut lines: Vec<String> = std::iter::from_fn(|| self.next_action()).map(|a| render_consumer(&a)).collect();
        lines.extend(
            std::mem::take(&mut self.rejected_messages).into_iter().map(|(s, why)| format!("refused {s}: {why}")),
        );
        lines
    }
}

#[test]
fn consumer_scenarios() {
    let files = scenario_files("consumer");
    assert!(files.len() >= 6, "consumer scenario files missing");
    for file in &files {
        assert!(run_scenario(file, &mut Consumer::new()) > 0, "{} has no steps", file.display());
    }
}

#[test]
fn producer_scenarios() {
    let files = scenario_files("producer");
    assert!(files.len() >= 8, "producer scenario files missing");
    for file in &files {
        assert!(run_scenario(file, &mut Producer::new()) > 0, "{} has no steps", file.display());
    }
}
