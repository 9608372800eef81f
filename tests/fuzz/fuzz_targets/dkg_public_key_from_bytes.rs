#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qk_fuzz::dkg_public_key_from_bytes(data));
