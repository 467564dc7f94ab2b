//! The submission parser on arbitrary bytes: it must answer (accept or refuse with field
//! errors), never panic, and never allocate without bound (`scripts/fuzz` sets libFuzzer's
//! malloc limit). The invariants are `assert_parse_invariants`, which the corpus test shares.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The scheduler's default limit (`--max-submission-bytes`).
const MAX_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    harmonia_shared::submission::assert_parse_invariants(data, MAX_BYTES);
});
