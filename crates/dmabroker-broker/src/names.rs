//! Who owns a name (finding 9 of docs/SECURITY.md): publications and pools
//! by name live in per-user namespaces, so that a squatter cannot serve its
//! own bytes under the name another user's service is known by.
//!
//! - A name published (or a pool registered) by uid `U` is kept as `U/NAME`.
//!   `NAME` may itself be `U/...` (the publisher's own namespace, written
//!   out); another uid's namespace is refused.
//! - The policy may reserve a name, or a prefix (`cam*`), for a uid
//!   (`[[name]]`): nobody else may publish it.
//! - A key without a namespace resolves only to an owner the asker trusts:
//!   the uid the policy reserves the name for, if any (and then only it);
//!   else the asker itself, root, then the broker's own uid. Any other
//!   user's publication is reached by its qualified form `U/NAME`.
//! - Tokens (`@...`) are capabilities, not names: global, unchanged.
//!
//! The wire protocol is unchanged (a name was already allowed to contain
//! `/`); what changed is whose publication an unqualified name reaches
//! (docs/PROTOCOL.md, "Names").

use crate::policy::Policy;
use dmabroker::proto::{self, ErrorCode};

/// `U/REST` -> `(U, REST)` when the first segment is a uid (decimal digits,
/// no leading zero but `0` itself).
pub fn split_namespace(name: &str) -> Option<(u32, &str)> {
    let (head, rest) = name.split_once('/')?;
    if head.is_empty() || rest.is_empty() || (head.len() > 1 && head.starts_with('0')) {
        return None;
    }
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, rest))
}

/// Why a name may not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRefusal {
    /// The wire code.
    pub code: ErrorCode,
    /// Cause and fix.
    pub message: String,
}

/// The key under which `publisher` keeps `name` (a publication or a pool).
///
/// # Errors
/// `NotAllowed`: `name` is in another uid's namespace, or the policy
/// reserves it for another uid; `BadRequest`: with its namespace the key
/// would be longer than [`proto::MAX_NAME_LEN`].
pub fn qualify(policy: &Policy, name: &str, publisher: u32) -> Result<String, NameRefusal> {
    let refuse = |code, message| Err(NameRefusal { code, message });
    if name.starts_with(proto::TOKEN_PREFIX) {
        return Ok(name.to_owned());
    }
    if let Some((owner, bare)) = split_namespace(name) {
        if owner != publisher {
            return refuse(
                ErrorCode::NotAllowed,
                format!(
                    "`{name}` is in the namespace of uid {owner}; uid {publisher} publishes under its own: use `{bare}` \
                     (kept as `{publisher}/{bare}`)"
                ),
            );
        }
        return Ok(name.to_owned());
    }
    if let Some(owner) = policy.reserved_owner(name) {
        if owner != publisher && publisher != 0 {
            return refuse(
                ErrorCode::NotAllowed,
                format!(
                    "the policy reserves `{name}` for uid {owner}; choose another name, or ask the administrator to \
                     reserve it for uid {publisher} ([[name]] in the policy)"
                ),
            );
        }
    }
    let key = format!("{publisher}/{name}");
    if key.len() > proto::MAX_NAME_LEN {
        return refuse(
            ErrorCode::BadRequest,
            format!(
                "`{name}` is kept as `{key}`, {} bytes, beyond the {} a name may have: use a shorter name",
                key.len(),
                proto::MAX_NAME_LEN
            ),
        );
    }
    Ok(key)
}

/// The keys `key` may stand for when `asker` imports, attaches or
/// withdraws it, most trusted first: a token or qualified name itself; for
/// an unqualified name the reserved owner's only, else the asker's, root's
/// and the broker's own.
pub fn candidates(policy: &Policy, key: &str, asker: u32) -> Vec<String> {
    if key.starts_with(proto::TOKEN_PREFIX) || split_namespace(key).is_some() {
        return vec![key.to_owned()];
    }
    if let Some(owner) = policy.reserved_owner(key) {
        return vec![format!("{owner}/{key}")];
    }
    let mut owners = Vec::new();
    for o in [asker, 0, policy.owner_uid()] {
        if !owners.contains(&o) {
            owners.push(o);
        }
    }
    owners.into_iter().map(|o| format!("{o}/{key}")).collect()
}

/// The first of [`candidates`] that `exists`.
pub fn resolve(policy: &Policy, key: &str, asker: u32, exists: impl Fn(&str) -> bool) -> Option<String> {
    candidates(policy, key, asker).into_iter().find(|c| exists(c))
}

/// How `asker` names the key `stored`: unqualified when that resolves to it
/// for `asker`, else qualified (as stored).
pub fn shown(policy: &Policy, stored: &str, asker: u32, exists: impl Fn(&str) -> bool) -> String {
    let Some((_, bare)) = split_namespace(stored) else { return stored.to_owned() };
    if resolve(policy, bare, asker, exists).as_deref() == Some(stored) {
        bare.to_owned()
    } else {
        stored.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert_eq!(split_namespace("1001/cam0"), Some((1001, "cam0")));
        assert_eq!(split_namespace("0/x/y"), Some((0, "x/y")));
        assert_eq!(split_namespace("cams/front"), None);
        assert_eq!(split_namespace("01/x"), None);
        assert_eq!(split_namespace("99999999999/x"), None);
    }

    #[test]
    fn names_are_kept_in_the_publishers_namespace() {
        let policy = Policy::parse("[[name]]\nname = \"cam*\"\nuid = 1001\n", 500).unwrap();
        assert_eq!(qualify(&policy, "x", 7).unwrap(), "7/x");
        assert_eq!(qualify(&policy, "7/x", 7).unwrap(), "7/x");
        assert_eq!(qualify(&policy, "8/x", 7).unwrap_err().code, ErrorCode::NotAllowed);
        assert_eq!(qualify(&policy, "cam0", 7).unwrap_err().code, ErrorCode::NotAllowed);
        assert_eq!(qualify(&policy, "cam0", 1001).unwrap(), "1001/cam0");
        assert_eq!(candidates(&policy, "cam0", 7), ["1001/cam0"]);
        assert_eq!(candidates(&policy, "x", 7), ["7/x", "0/x", "500/x"]);
        assert_eq!(candidates(&policy, "x", 0), ["0/x", "500/x"]);
        assert_eq!(candidates(&policy, "9/x", 7), ["9/x"]);
    }

    /// Finding 9: a squatter published `cam0` before the camera service
    /// and served its own bytes under that name to every importer.
    #[test]
    fn a_squatter_cannot_serve_its_bytes_under_anothers_name() {
        use crate::peer::Peer;
        use crate::service::{Service, Session};
        use dmabroker::proto::{Access, Grant, Grantee, PublishRequest, Request, Response};
        const CAMERA: u32 = 4242;
        const SQUATTER: u32 = 4343;
        const VIEWER: u32 = 4444;
        const BROKER: u32 = 4000;
        let policy = Policy::parse(
            &format!(
                "[[user]]\nuid = {SQUATTER}\npublish = true\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n\
                 [[user]]\nuid = {CAMERA}\npublish = true\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n\
                 [[name]]\nname = \"cam*\"\nuid = {CAMERA}\n"
            ),
            BROKER,
        )
        .unwrap();
        let mut service = Service::new(policy, dmabroker::heap::Heaps::discover(), None, Default::default());
        let session = |service: &mut Service, uid: u32| {
            let peer = Peer { uid, gid: uid, pid: std::process::id(), groups: vec![uid], pidfd: None };
            let mut s = Session::new(peer, &service.policy);
            assert!(matches!(
                service.handle(&mut s, Request::Hello { min_version: 1, max_version: 1 }, None).response,
                Response::Hello { .. }
            ));
            s
        };
        let memfd = || {
            use rustix::fs::{MemfdFlags, SealFlags};
            let fd = rustix::fs::memfd_create("names", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, 4096).unwrap();
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
            fd
        };
        let publish = |service: &mut Service, s: &mut Session, name: &str| {
            let grants = vec![Grant { who: Grantee::Anyone, access: Access::ReadWrite }];
            let p = PublishRequest { name: Some(name.into()), grants, one_shot: false, expires_in_secs: None };
            service.handle(s, Request::Publish(p), Some(memfd())).response
        };
        let import = |service: &mut Service, s: &mut Session, key: &str| match service
            .handle(s, Request::Import { key: key.into() }, None)
            .response
        {
            Response::Imported { publisher_uid, .. } => Ok(publisher_uid),
            Response::Error { code, message } => Err((code, message)),
            r => panic!("{r:?}"),
        };
        let (mut camera, mut squatter, mut viewer) =
            (session(&mut service, CAMERA), session(&mut service, SQUATTER), session(&mut service, VIEWER));

        // A name the policy reserves: refused to anyone else, first or not.
        match publish(&mut service, &mut squatter, "cam0") {
            Response::Error { code: ErrorCode::NotAllowed, message } => {
                assert!(message.contains(&format!("reserves `cam0` for uid {CAMERA}")), "{message}");
            }
            r => panic!("the squatter took a reserved name: {r:?}"),
        }
        assert_eq!(publish(&mut service, &mut camera, "cam0"), Response::Published { key: "cam0".into() });
        assert_eq!(import(&mut service, &mut viewer, "cam0"), Ok(CAMERA));

        // Another user's namespace: refused.
        assert!(matches!(
            publish(&mut service, &mut squatter, &format!("{CAMERA}/front")),
            Response::Error { code: ErrorCode::NotAllowed, .. }
        ));
        // An unreserved name, published first by the squatter: the viewer
        // does not get it unqualified (it does not trust that user), and is
        // told the qualified name; the camera can still publish its own.
        assert_eq!(publish(&mut service, &mut squatter, "front"), Response::Published { key: "front".into() });
        match import(&mut service, &mut viewer, "front") {
            Err((ErrorCode::NotFound, message)) => {
                assert!(message.contains(&format!("`{SQUATTER}/front`")), "{message}");
            }
            r => panic!("an unqualified name reached an untrusted publisher: {r:?}"),
        }
        assert_eq!(import(&mut service, &mut viewer, &format!("{SQUATTER}/front")), Ok(SQUATTER));
        assert_eq!(publish(&mut service, &mut camera, "front"), Response::Published { key: "front".into() });
        assert_eq!(import(&mut service, &mut viewer, &format!("{CAMERA}/front")), Ok(CAMERA));
        // Each publisher reaches its own under the unqualified name.
        assert_eq!(import(&mut service, &mut camera, "front"), Ok(CAMERA));
        assert_eq!(import(&mut service, &mut squatter, "front"), Ok(SQUATTER));
        // The list names each as its asker would import it.
        let Response::List { entries, .. } = service.handle(&mut viewer, Request::List, None).response else {
            panic!("list")
        };
        let mut keys: Vec<_> = entries.iter().map(|e| e.key.clone()).collect();
        keys.sort();
        assert_eq!(keys, ["4242/front", "4343/front", "cam0"]);
    }
}
