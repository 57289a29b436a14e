//! The ack token: `v1.<generation>.<partition>:<delivery id>,...`, base64url. It names the
//! deliveries of one poll; it carries no authority of its own (the deliveries it names must still
//! be the subscription's in flight), so it is not signed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ApiError;

/// Longest token accepted, in characters (a poll names at most one delivery per partition).
const MAX_CHARS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub generation: i64,
    /// (partition, delivery id).
    pub deliveries: Vec<(i32, String)>,
}

impl Token {
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self.deliveries.iter().map(|(p, id)| format!("{p}:{id}")).collect();
        URL_SAFE_NO_PAD.encode(format!("v1.{}.{}", self.generation, parts.join(",")))
    }

    /// 400 `invalid_json` naming `ack` when it is not a token this server issues.
    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::InvalidJson("ack: not an ack token of this server".into());
        if raw.is_empty() || raw.len() > MAX_CHARS {
            return Err(invalid());
        }
        let text =
            URL_SAFE_NO_PAD.decode(raw).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(invalid)?;
        let mut fields = text.splitn(3, '.');
        let (Some("v1"), Some(generation), Some(list)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(invalid());
        };
        let generation = generation.parse().map_err(|_| invalid())?;
        let deliveries = list
            .split(',')
            .map(|item| {
                let (p, id) = item.split_once(':')?;
                let p: i32 = p.parse().ok().filter(|p| *p >= 0)?;
                (!id.is_empty() && id.len() <= 32).then(|| (p, id.to_owned()))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid)?;
        Ok(Self { generation, deliveries })
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn a_token_reads_back_and_anything_else_is_refused() {
        let token = Token { generation: 3, deliveries: vec![(0, "00ff".into()), (7, "abcd".into())] };
        assert_eq!(Token::decode(&token.encode()).unwrap(), token);
        for bad in ["", "nope", "djEuMy4", &"A".repeat(70_000)] {
            assert!(Token::decode(bad).is_err(), "{bad}");
        }
    }
}
