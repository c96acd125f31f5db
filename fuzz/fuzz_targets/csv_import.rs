//! The import path for user and device lists: bytes in an unknown encoding, split as
//! CSV (or read as TOML), checked row by row. Whatever the bytes, the answer is rows
//! or problems naming rows, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_policy_engine::import::{decode, parse_csv, parse_devices, TextEncoding};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 3 {
        0 => TextEncoding::Auto,
        1 => TextEncoding::Utf8,
        _ => TextEncoding::ShiftJis,
    };
    let Ok((text, _)) = decode(bytes, encoding) else {
        return;
    };
    if let Ok(records) = parse_csv(&text) {
        for r in &records {
            assert!(r.row >= 1, "a record starts on row 1 or later");
        }
    }
    let _ = parse_devices(&text, selector & 0x80 != 0);
    // Certificate paths resolve against a directory with nothing in it.
    let _ = sekisho_gateway::import::parse_users(&text, std::path::Path::new("/nonexistent"));
});
