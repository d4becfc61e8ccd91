//! Cron expressions: parsing never panics, and fire times strictly increase.
#![no_main]

use libfuzzer_sys::fuzz_target;

const ZONES: &[chrono_tz::Tz] = &[
    chrono_tz::UTC,
    chrono_tz::Europe::Paris,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Asia::Kathmandu,
    chrono_tz::Pacific::Apia,
    chrono_tz::America::Santiago,
    chrono_tz::Africa::Casablanca,
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(expr) = std::str::from_utf8(rest) else {
        return;
    };
    let tz = ZONES[usize::from(first) % ZONES.len()];
    let Ok(cron) = beatd::schedule::CronSchedule::parse(expr, tz) else {
        return;
    };
    // A start anywhere in 1970-2100, from the input's first byte.
    let start = 86_400 * 365 * i64::from(first % 130) + i64::from(first) * 3_607;
    let mut at = chrono::DateTime::from_timestamp(start, 0).unwrap();
    for _ in 0..5 {
        match cron.next_after(at) {
            Some(next) => {
                assert!(next > at, "{expr:?} in {tz}: {next} after {at}");
                at = next;
            }
            None => break,
        }
    }
});
