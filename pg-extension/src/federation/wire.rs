//! The text form values travel in. Batches carry every value as PostgreSQL prints it; how it prints depends on
//! the session (DateStyle, IntervalStyle, TimeZone, extra_float_digits, bytea_output, lc_monetary), and so does
//! how the other side parses it. Servers of one federation are configured differently (a consumer in another
//! country, an operator's `extra_float_digits = 0`), so the publisher prints and the subscriber parses under
//! one canonical form: ISO dates, ISO 8601 intervals, UTC, shortest-exact floats (incl. NaN and ±Infinity), hex
//! bytea, C-locale money. A value then round-trips exactly whatever either server's postgresql.conf says.
//!
//! Only around the printing and the parsing ([`with_wire_settings`]), not for the whole worker session: the
//! refreshes those workers also run (a REINITIALIZE snapshot, a causal apply's refresh) must evaluate queries
//! under the server's own settings (a `date_trunc` on a timestamptz depends on TimeZone), like every other
//! refresh of the stream table.

use crate::catalog;
use crate::error::Result;

/// The settings both workers print and parse values under.
pub const WIRE_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "iso_8601"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
];

/// Runs `work` under [`WIRE_SETTINGS`] (transaction-local), then puts the settings back as they were. One
/// statement each way: this runs around every batch read and every apply.
pub fn with_wire_settings<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let names: Vec<String> = WIRE_SETTINGS.iter().map(|(name, _)| name.to_string()).collect();
    let values: Vec<String> = WIRE_SETTINGS.iter().map(|(_, value)| value.to_string()).collect();
    // Each row reads its setting before setting it; the rows name distinct settings, so the order rows are
    // produced in does not matter.
    let before = catalog::scalar::<Vec<String>>(
        "SELECT array_agg(before ORDER BY ord) FROM (SELECT ord, current_setting(name) AS before, value, name \
           FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(name, value, ord) OFFSET 0) settings \
         WHERE set_config(name, value, true) IS NOT NULL",
        &[names.clone().into(), values.into()],
    )?
    .unwrap_or_default();
    let out = work()?;
    catalog::scalar::<i64>(
        "SELECT count(set_config(name, value, true)) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
        &[names.into(), before.into()],
    )?;
    Ok(out)
}
