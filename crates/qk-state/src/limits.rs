//! Size limits shared by the command, authentication and state-machine
//! modules (a leaf: it imports nothing of this crate).

/// How many request ids are remembered for deduplication (oldest forgotten
/// first). A client retries within seconds; this covers far more than that.
pub const MAX_REMEMBERED_REQUESTS: usize = 100_000;
/// Most requests remembered at once: past it (all of them applied within a
/// proof's lifetime) new commands are refused until older ones age out.
pub const MAX_FRESH_REQUESTS: usize = 4 * MAX_REMEMBERED_REQUESTS;
/// Longest key, principal and tag name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 128;
pub(crate) const MAX_TEXT_LEN: usize = 1024;

/// At most `max` bytes of `text` (cut at a character boundary), for names a
/// refused command carries into its audit record.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
