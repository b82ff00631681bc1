//! Which checkpoint files a prefix holds and which are old enough to prune. A file counts only when its name is
//! a time this extension writes (`2026-12-01T16:00:00.123Z.jsonl.zst`): pruning never deletes what it did not
//! write, and it goes by the time in the name (when the checkpoint was taken), not by the store's modification
//! time, which a copy or a sync changes.

use super::SUFFIX;

/// Milliseconds since the Unix epoch of a checkpoint file name, or None when the name is not one.
pub fn taken_at_ms(file_name: &str) -> Option<i64> {
    let stamp = file_name.strip_suffix(SUFFIX)?;
    let b = stamp.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = stamp.get(from..to)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second, millis) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Which of the checkpoints taken at `taken_at_ms` (positions in the slice) to delete: those taken more than
/// `retention_days` before `now_ms`. The newest is always kept, however old, so a database that stopped writing
/// checkpoints still has one to restore.
pub fn to_prune(taken_at_ms: &[i64], now_ms: i64, retention_days: i64) -> Vec<usize> {
    let horizon = now_ms - retention_days * 86_400_000;
    let newest = taken_at_ms.iter().max().copied();
    let mut doomed: Vec<usize> =
        (0..taken_at_ms.len()).filter(|&i| taken_at_ms[i] < horizon && Some(taken_at_ms[i]) != newest).collect();
    doomed.sort_by_key(|&i| taken_at_ms[i]);
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_the_time_they_were_taken() {
        assert_eq!(taken_at_ms("1970-01-01T00:00:00.000Z.jsonl.zst"), Some(0));
        assert_eq!(taken_at_ms("2026-12-01T16:00:00.123Z.jsonl.zst"), Some(1_796_140_800_123));
        assert_eq!(taken_at_ms("2000-03-01T00:00:00.000Z.jsonl.zst"), Some(951_868_800_000));
        for foreign in
            ["notes.txt", "2026-12-01T16:00:00.123Z.json", "2026-13-01T16:00:00.123Z.jsonl.zst", "x.jsonl.zst"]
        {
            assert_eq!(taken_at_ms(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn only_old_checkpoints_are_pruned_and_never_the_newest() {
        let day = 86_400_000;
        let names: Vec<String> = ["2026-11-20T00:00:00.000Z.jsonl.zst", "2026-11-29T00:00:00.000Z.jsonl.zst", "README"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let now = taken_at_ms("2026-12-01T00:00:00.000Z.jsonl.zst").unwrap();
        // As prune does: only names that are checkpoints, by the time in the name.
        let checkpoints: Vec<&String> = names.iter().filter(|n| taken_at_ms(n).is_some()).collect();
        let taken: Vec<i64> = checkpoints.iter().filter_map(|n| taken_at_ms(n)).collect();
        let doomed = |now, days| -> Vec<&str> {
            to_prune(&taken, now, days).into_iter().map(|i| checkpoints[i].as_str()).collect()
        };
        assert_eq!(doomed(now, 7), vec!["2026-11-20T00:00:00.000Z.jsonl.zst"]);
        assert!(doomed(now, 30).is_empty());
        // Everything old: the newest stays.
        assert_eq!(doomed(now + 100 * day, 7), vec!["2026-11-20T00:00:00.000Z.jsonl.zst"]);
    }
}
