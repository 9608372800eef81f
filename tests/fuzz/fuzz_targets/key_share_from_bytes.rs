#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qk_fuzz::key_share_from_bytes(data));
