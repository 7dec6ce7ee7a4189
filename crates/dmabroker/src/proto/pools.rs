//! Pools by name (protocol version 3): a producer registers a streaming pool
//! under a name with an ACL; a consumer attaches by name, and the broker, if
//! the ACL lets it, joins the two with a fresh socket pair.
//!
//! ```text
//! producer                         broker                          consumer
//!   socketpair(doorbell, ring)
//!   RegisterPool{name, grants} + ring ──►  keeps `ring`
//!                                  ◄── PoolRegistered
//!                                          ◄── AttachPool{name}
//!                                          ACL check (uid, groups)
//!                                          socketpair(a, b)
//!   doorbell ◄── PoolConsumer{uid,gid,pid,access} + a   (MSG_DONTWAIT)
//!                                          PoolAttached{..} + b ──►
//!   Producer::attach(a)  ◄══════════ pool HELLO / WELCOME ══════════►  Consumer::attach(b)
//! ```
//!
//! The doorbell is a `SOCK_SEQPACKET` socket pair the producer made and
//! gave the broker one end of, so every message arriving on the producer's
//! end comes from the broker: the consumer identity it names (uid, gid and
//! pid from the consumer's `SO_PEERCRED`, kernel facts) is the broker's
//! word, not the consumer's claim. The registration lasts as long as the
//! doorbell: the producer ends it by closing its end (or exiting), with no
//! request; a name whose doorbell hung up is free again at once.
//!
//! The broker never waits on a producer: it pushes with `MSG_DONTWAIT`, and
//! a producer whose doorbell queue is full is reported to the consumer as
//! busy.

use super::{check_text, invalid, validate_name, CodecError, Grant, MAX_GRANTS};
use serde::{Deserialize, Serialize};

/// The first protocol version with [`RegisterPoolRequest`],
/// [`super::Request::AttachPool`] and their responses.
pub const POOLS_VERSION: u16 = 3;

/// What [`super::Request::RegisterPool`] asks for; the doorbell socket
/// comes with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterPoolRequest {
    /// The pool's name ([`validate_name`] rules; one namespace per broker,
    /// separate from publications).
    pub name: String,
    /// Who else may attach. The producer's own uid and root always may.
    pub grants: Vec<Grant>,
    /// A description for `list` and logs (format, size: free text).
    pub description: String,
}

impl RegisterPoolRequest {
    /// Check every field against its bound.
    ///
    /// # Errors
    /// [`CodecError::InvalidField`] naming the field.
    pub fn validate(&self) -> Result<(), CodecError> {
        validate_name(&self.name)?;
        if self.grants.len() > MAX_GRANTS {
            return Err(invalid(format!("grants: {} entries, at most {MAX_GRANTS}", self.grants.len())));
        }
        check_text("description", &self.description, super::MAX_NAME_LEN)
    }
}

/// Who attached, as the broker tells the producer on its doorbell
/// ([`super::Response::PoolConsumer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPeer {
    /// The consumer's uid (`SO_PEERCRED` of its broker connection).
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its pid in the broker's pid namespace (0: not visible there).
    pub pid: u32,
    /// What the ACL granted it.
    pub access: super::Access,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{decode_request, decode_response, encode_request, encode_response, Access, Request, Response};

    #[test]
    fn pool_messages_round_trip_and_are_bounded() {
        let register = Request::RegisterPool(RegisterPoolRequest {
            name: "cam/0".into(),
            grants: vec!["uid=1000:ro".parse().unwrap()],
            description: "video/x-raw,format=NV12,width=1920,height=1080".into(),
        });
        assert!(register.carries_fd());
        assert_eq!(decode_request(&encode_request(&register).unwrap()).unwrap(), register);
        let attach = Request::AttachPool { name: "cam/0".into() };
        assert!(!attach.carries_fd());
        assert_eq!(decode_request(&encode_request(&attach).unwrap()).unwrap(), attach);
        assert!(encode_request(&Request::AttachPool { name: "a b".into() }).is_err());
        let long = Request::RegisterPool(RegisterPoolRequest {
            name: "p".into(),
            grants: vec![],
            description: "x".repeat(crate::proto::MAX_NAME_LEN + 1),
        });
        assert!(encode_request(&long).is_err());
        let push = Response::PoolConsumer(PoolPeer { uid: 1, gid: 2, pid: 3, access: Access::ReadOnly });
        assert_eq!(decode_response(&encode_response(&push).unwrap()).unwrap(), push);
    }
}
