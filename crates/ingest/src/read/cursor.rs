//! Opaque page cursors, bound to what they were issued for.
//!
//! A cursor is `base64url(position) "." base64url(id tag)`: the position is the last event of the
//! page as JSON (so clients can treat the cursor as opaque and servers can read it back without
//! storage), `id` is one byte naming the secret that signed it, and the tag is an HMAC-SHA256 over
//! the *scope* (the route, the tenant and the filters) and the position. A cursor that was altered, or is presented with other filters, on
//! another route or by another tenant, fails the check and gets 400 `invalid_query`. A forged
//! cursor could in any case only name a position: every query is scoped to the caller's tenant.
//!
//! The key is derived from the cursor secret, which every replica shares and which has nothing to
//! do with the API keys ([`super::cursor_keys`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Bytes of the tag kept in a cursor: 128 bits.
const TAG_BYTES: usize = 16;

/// Issues and checks cursors.
#[derive(Clone)]
pub struct CursorSigner {
    id: u8,
    key: [u8; 32],
}

/// Why a cursor does not open; the same words whatever was wrong with it.
pub const BAD: &str = "the cursor is not one this API issued for this tenant, route and filters";

/// The id of the secret `cursor` names, if it has the shape of a cursor.
pub fn key_id(cursor: &str) -> Option<u8> {
    let (_, tag) = cursor.split_once('.')?;
    URL_SAFE_NO_PAD.decode(tag).ok()?.first().copied()
}

impl std::fmt::Debug for CursorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorSigner")
    }
}

impl CursorSigner {
    /// A signer whose key is derived from `secret`, named `id` in its cursors.
    pub fn new(id: u8, secret: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"evp page cursor v2\n");
        hasher.update(secret);
        Self { id, key: hasher.finalize().into() }
    }

    /// The id its cursors carry.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The cursor for `position` within `scope`.
    pub fn issue<T: Serialize>(&self, scope: &str, position: &T) -> String {
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let mut tag = vec![self.id];
        tag.extend_from_slice(&self.tag(scope, &payload)[..TAG_BYTES]);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(&tag))
    }

    /// The position in `cursor`, if it was issued for `scope` and not altered.
    pub fn open<T: DeserializeOwned>(&self, scope: &str, cursor: &str) -> Result<T, &'static str> {
        let (payload, tag) = cursor.split_once('.').ok_or(BAD)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| BAD)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| BAD)?;
        let Some((&id, tag)) = tag.split_first() else { return Err(BAD) };
        if id != self.id || tag.len() != TAG_BYTES {
            return Err(BAD);
        }
        let mut mac = self.mac(scope);
        mac.update(&payload);
        mac.verify_truncated_left(tag).map_err(|_| BAD)?;
        serde_json::from_slice(&payload).map_err(|_| BAD)
    }

    fn mac(&self, scope: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac
    }

    fn tag(&self, scope: &str, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.mac(scope);
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_only_in_its_own_scope_and_unaltered() {
        let signer = CursorSigner::new(3, b"secret");
        let cursor = signer.issue("events\nacme\ntype=a", &(17i64, "e-9"));
        assert_eq!(
            signer.open::<(i64, String)>("events\nacme\ntype=a", &cursor).unwrap(),
            (17, "e-9".into())
        );
        assert!(signer.open::<(i64, String)>("events\nacme\ntype=b", &cursor).is_err(), "other filters");
        assert!(signer.open::<(i64, String)>("events\nglobex\ntype=a", &cursor).is_err(), "other tenant");
        assert_eq!(key_id(&cursor), Some(3), "the cursor names its secret");
        assert!(
            CursorSigner::new(3, b"other").open::<(i64, String)>("events\nacme\ntype=a", &cursor).is_err()
        );
        assert!(
            CursorSigner::new(4, b"secret").open::<(i64, String)>("events\nacme\ntype=a", &cursor).is_err()
        );
        let (payload, tag) = cursor.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(br#"[18,"e-9"]"#));
        assert!(signer.open::<(i64, String)>("events\nacme\ntype=a", &forged).is_err(), "altered position");
        for bad in ["", ".", "x", "x.y", &format!("{payload}."), &format!("{payload}.{}", &tag[..4])] {
            assert!(signer.open::<(i64, String)>("events\nacme\ntype=a", bad).is_err(), "{bad:?}");
        }
    }
}
