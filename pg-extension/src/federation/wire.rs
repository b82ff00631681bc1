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

/// Runs `work` under [`WIRE_SETTINGS`] (transaction-local), then puts the settings back as they were.
pub fn with_wire_settings<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut saved = Vec::with_capacity(WIRE_SETTINGS.len());
    for (name, value) in WIRE_SETTINGS {
        let before = catalog::scalar::<String>("SELECT current_setting($1)", &[(*name).into()])?.unwrap_or_default();
        catalog::scalar::<String>("SELECT set_config($1, $2, true)", &[(*name).into(), (*value).into()])?;
        saved.push((*name, before));
    }
    let out = work()?;
    for (name, before) in saved {
        catalog::scalar::<String>("SELECT set_config($1, $2, true)", &[name.into(), before.into()])?;
    }
    Ok(out)
}
