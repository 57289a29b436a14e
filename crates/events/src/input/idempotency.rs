//! The `Idempotency-Key` header: its check, and the ids it gives events sent without one.

use super::Problem;

/// Longest accepted `Idempotency-Key` header, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Namespace of the ids derived from an `Idempotency-Key` (a fixed random UUID).
const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f0e_4c1b_9a7d_4e52_b1c3_8d2f_5a60_e917);

/// The id given to the event at `index` of a request sent by `tenant` with `Idempotency-Key: key`
/// and no `id` of its own: a UUIDv5 of the three, so the same request sent again gets the same ids.
pub fn derived_id(tenant: &str, key: &str, index: usize) -> String {
    let name = format!("{tenant}\n{key}\n{index}");
    uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string()
}

/// Checks an `Idempotency-Key` header value: 1 to 128 visible ASCII characters.
pub fn check_idempotency_key(value: &[u8]) -> Result<&str, Problem> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_CHARS
        && value.iter().all(|b| (0x20..0x7f).contains(b));
    match std::str::from_utf8(value) {
        Ok(key) if ok => Ok(key),
        _ => Err(Problem {
            index: None,
            field: Some("Idempotency-Key"),
            message: format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            ),
        }),
    }
}
