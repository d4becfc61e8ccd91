//! The Celery message decoder: any bytes give a task or a `DecodeError`, never a panic; the
//! size-limited path reads the id of oversized messages without decoding them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = beatd::protocol::Envelope::parse(data);
    if let Err(e) = &full {
        let _ = (e.to_string(), e.task_id());
    }
    let limited = beatd::protocol::Envelope::parse_limited(data, 64);
    if data.len() <= 64 {
        assert_eq!(full.is_ok(), limited.is_ok());
    } else {
        assert!(limited.is_err());
    }
});
