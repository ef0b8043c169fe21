//! Printing results: text for people, one JSON document (or one per line when streaming) for
//! scripts.

use serde::Serialize;

/// Prints `value` as pretty JSON, or the text `text` renders.
pub fn emit<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let text = text(value);
        if !text.is_empty() {
            println!("{text}");
        }
    }
    Ok(())
}

/// One line per item: compact JSON (a JSON Lines stream) or text.
pub fn emit_line<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text(value));
    }
    Ok(())
}

/// `2026-11-21 09:41` (UTC) from milliseconds since the epoch.
pub fn time(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(at) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02}", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
        }
        Err(_) => "????-??-?? ??:??".to_owned(),
    }
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times_and_sizes() {
        assert_eq!(super::time(0), "1970-01-01 00:00");
        assert_eq!(super::time(1_795_000_000_000), "2026-11-18 11:06");
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
