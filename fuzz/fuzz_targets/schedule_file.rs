//! The schedule file parser and validator: any bytes give entries or diagnostics, never a
//! panic; diagnostics render (file:line:column with a caret) without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = chrono::DateTime::from_timestamp(1_795_428_000, 0).unwrap();
    match beatd::config::load_schedule_str("fuzz.toml", text, now) {
        Ok(loaded) => {
            for entry in &loaded.entries {
                // Next-fire math on whatever validated.
                let mut at = now;
                for _ in 0..3 {
                    match entry.schedule.next_after(at) {
                        Some(next) => {
                            assert!(next > at, "next_after went backwards");
                            at = next;
                        }
                        None => break,
                    }
                }
            }
            for w in &loaded.warnings {
                let _ = w.to_string();
            }
        }
        Err(diags) => {
            let _ = diags.to_string();
        }
    }
});
