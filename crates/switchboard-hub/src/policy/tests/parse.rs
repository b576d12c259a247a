//! Parse errors name the key and the line; the file checks.

use super::*;
use crate::policy::PolicyError;

/// The error's line and message.
fn error(text: &str) -> (usize, String) {
    match Policy::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(PolicyError::Invalid { line, message, .. }) => (line, message),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let (line, message) =
        error("owner = \"all\"\n[[principal]]\nname = \"a\"\nunix_uid = [1]\npublsh = {}\n");
    assert_eq!(line, 5);
    assert!(message.contains("publsh"), "{message}");
    let (line, message) = error("\n\n[[principal]]\nname = \"a\"\nunix_uid = [1]\npublish = { allow = [\"a\"], deny = [], also = [] }\n");
    assert_eq!(line, 6);
    assert!(message.contains("also"), "{message}");
    let (line, message) = error("ownr = \"all\"\n");
    assert_eq!(line, 1);
    assert!(message.contains("ownr"), "{message}");
}

#[test]
fn values_are_checked_where_they_are() {
    let cases: &[(&str, usize, &str)] = &[
        ("owner = \"some\"\n", 1, "owner"),
        ("[[principal]]\nname = \"a b\"\nunix_uid = [1]\n", 2, "principal name"),
        ("[[principal]]\nname = \"owner\"\nunix_uid = [1]\n", 2, "reserved"),
        ("[[principal]]\nname = \"a\"\nids = [\"a\"]\n", 1, "no recogniser"),
        (
            "[[principal]]\nname = \"a\"\nunix_uid = [1]\n\n[[principal]]\nname = \"a\"\nunix_uid = [2]\n",
            6,
            "used twice",
        ),
        (
            "[[principal]]\nname = \"a\"\nunix_uid = [1]\n[[principal]]\nname = \"b\"\nunix_uid = [2, 1]\n",
            6,
            "unix_uid 1 is already claimed by principal 'a'",
        ),
        (
            "[[principal]]\nname = \"a\"\nunix_gid = [1]\n[[principal]]\nname = \"b\"\nunix_gid = [1]\n",
            6,
            "unix_gid 1",
        ),
        (
            "[[principal]]\nname = \"a\"\ncert_cn = [\"x\"]\n[[principal]]\nname = \"b\"\ncert_cn = [\"x\"]\n",
            6,
            "cert_cn \"x\"",
        ),
        (
            "[[principal]]\nname = \"a\"\nhub_secret = true\n[[principal]]\nname = \"b\"\nhub_secret = true\n",
            6,
            "hub_secret",
        ),
        (
            "[[principal]]\nname = \"a\"\nunix_uid = [1]\npublish = { allow = [\"a.>.b\"] }\n",
            4,
            "publish.allow pattern \"a.>.b\"",
        ),
        (
            "[[principal]]\nname = \"a\"\nunix_uid = [1]\nsubscribe = { deny = [\"a..b\"] }\n",
            4,
            "subscribe.deny",
        ),
        ("[[principal]]\nname = \"a\"\nunix_uid = [1]\nids = [\"x-{gid}\"]\n", 4, "ids entry"),
        ("[[principal]]\nname = \"a\"\nunix_uid = [1]\nsend = [\"\"]\n", 4, "send entry"),
        ("[[principal]]\nname = \"a\"\nunix_uid = [\"x\"]\n", 3, "u32"),
    ];
    for (text, line, needle) in cases {
        let (got, message) = error(text);
        assert!(
            message.contains(needle),
            "{text}: {message:?} lacks {needle:?}"
        );
        assert_eq!(got, *line, "{text}: {message}");
    }
}

#[test]
fn a_token_in_the_wrong_place_is_never_echoed() {
    let text = "[[principal]]\nname = \"a\"\ntoken_sha256 = [\"hunter2\"]\n";
    let (line, message) = error(text);
    assert_eq!(line, 3);
    assert!(message.contains("hash-token"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    // Two principals with one token.
    let digest = Policy::hash_token("shared");
    let text = format!("[[principal]]\nname = \"a\"\ntoken_sha256 = [\"{digest}\"]\n[[principal]]\nname = \"b\"\ntoken_sha256 = [\"{}\"]\n", digest.to_uppercase());
    let (line, message) = error(&text);
    assert_eq!(line, 6);
    assert!(
        message.contains("principal 'a'") && !message.contains(&digest),
        "{message}"
    );
}

#[test]
fn hash_token_is_the_key_of_from_token() {
    let digest = Policy::hash_token("test");
    assert_eq!(
        digest,
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let p = policy(&format!(
        "[[principal]]\nname = \"t\"\ntoken_sha256 = [\"{digest}\"]\n"
    ));
    let key = switchboard_discovery::Secret::from_token("test");
    assert!(p.token(&key.key_id()).unwrap().secret.same_key(&key));
}

#[test]
fn an_empty_policy_is_the_owner_alone() {
    let p = policy("");
    assert_eq!(p.principals().collect::<Vec<_>>(), vec![OWNER]);
    assert!(p.describe().contains("every right"));
    let d = example().describe();
    assert!(d.contains("app: 1 token(s), uid 1000;"), "{d}");
    assert!(!d.contains(&Policy::hash_token(APP_TOKEN)), "{d}");
}

#[cfg(unix)]
mod file {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &std::path::Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_file_with_tokens_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[principal]]\nname = \"a\"\ntoken_sha256 = [\"{}\"]\n",
            Policy::hash_token("t")
        );
        let path = write(dir.path(), &text, 0o644);
        let e = Policy::load(&path).unwrap_err();
        assert!(
            matches!(e, PolicyError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
        assert!(!message.contains(&Policy::hash_token("t")), "{message}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Policy::load(&path).is_ok());
    }

    #[test]
    fn a_file_others_may_change_is_refused_and_a_readable_one_without_tokens_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[[principal]]\nname = \"a\"\nunix_uid = [1]\n",
            0o646,
        );
        let e = Policy::load(&path).unwrap_err();
        assert!(e.to_string().contains("change"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Policy::load(&path).is_ok());
    }

    #[test]
    fn errors_in_a_file_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "\nbogus = 1\n", 0o600);
        let message = Policy::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("policy file {}, line 2:", path.display())),
            "{message}"
        );
        assert!(message.contains("bogus"), "{message}");
        let missing = dir.path().join("missing.toml");
        let message = Policy::load(&missing).unwrap_err().to_string();
        assert!(message.contains("missing.toml"), "{message}");
    }
}

#[test]
fn the_users_guide_example_parses() {
    let guide = include_str!("../../../../../docs/POLICY.md");
    let start = guide.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + guide[start..].find("```").expect("its end");
    let p = policy(&guide[start..end]);
    let names: Vec<&str> = p.principals().collect();
    assert_eq!(names, vec![OWNER, "app", "ops", "replica"]);
}
