//! The policy parser on arbitrary text: it never panics; a refusal names a
//! line inside the text with a bounded message; an accepted policy
//! describes itself and answers the admission questions without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_hub::policy::{Policy, PolicyError};
use switchboard_hub::router::admission::{Admission, Peer, Proof};
use switchboard_wire::{proto, Frame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text) {
        Ok(policy) => {
            let _ = policy.describe();
            let peer = Peer::tcp("127.0.0.1:1");
            for name in policy.principals().map(str::to_owned).collect::<Vec<_>>() {
                let id = policy.identify(&peer, &Proof::Token(name.clone()));
                let info = proto::ClientInfo {
                    client_id: "c".into(),
                    principal: name,
                    uid: Some(1000),
                    ..Default::default()
                };
                let _ = (id, policy.admit_client(&info));
                let _ = policy.admit((&info).into(), &Frame::publish("a.b", "x"));
            }
        }
        Err(PolicyError::Invalid { line, message, .. }) => {
            assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "line {line}");
            assert!(message.len() <= 4096, "{} bytes", message.len());
        }
        Err(e) => panic!("parse gave a file error: {e}"),
    }
});
