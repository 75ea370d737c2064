//! A user switching from the npm p2p-socket keeps the key their peers already have: the same
//! identity.json, host and port give the same share key (vectors computed with the npm tool's
//! rules on Node hyperdht 6.34.0, see interop/node/keypair.js).

use test_support as support;

use std::path::PathBuf;

use support::cli::{bin, succeed, LocalDht, ShareProcess};
use support::net::unused_udp_port;

/// `p2p-socket create-id -s abc` in the npm tool writes this identity.
const NPM_IDENTITY_ABC: &str = r#"{
  "keyPair": {
    "publicKey": "204aaed5e86cd99a149c0d51d033261996cdbd67a2becb24dfaa43a4828181e8",
    "secretKey": "6162636162636162636162636162636162636162636162636162636162636162204aaed5e86cd99a149c0d51d033261996cdbd67a2becb24dfaa43a4828181e8"
  }
}"#;
/// ...and `share -p 8080` (host localhost) then announces this key.
const NPM_SHARE_KEY_LOCALHOST_8080: &str =
    "2078f5be017d2a0ca485b232ab02d852837aedc9dc340078bd5ba732a680feba";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2p-socket-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn create_id_writes_what_the_npm_tool_writes() {
    let dir = temp_dir("create-id");
    let out = succeed(
        bin()
            .args(["create-id", "--seed", "a", "bc"])
            .current_dir(&dir),
    );
    let written = std::fs::read_to_string(dir.join("identity.json")).unwrap();
    // The npm tool joins the seed words without spaces: `-s a bc` is the seed "abc".
    assert_eq!(written, NPM_IDENTITY_ABC);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&dir.join("identity.json").display().to_string()),
        "says where: {stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn share_with_an_npm_identity_announces_the_npm_key() {
    let dir = temp_dir("npm-identity");
    let path = dir.join("identity.json");
    std::fs::write(&path, NPM_IDENTITY_ABC).unwrap();
    let dht = LocalDht::start(3);
    let mut share = ShareProcess::start_with(
        &dht.bootstrap,
        &["--port", "8080", "--identity", path.to_str().unwrap()],
    );
    // The npm tool's key by default (68 bits of secret survive its rule for localhost:8080),
    // with a warning that says so and names the full-strength choice.
    assert_eq!(share.key, NPM_SHARE_KEY_LOCALHOST_8080);
    share.terminate_and_expect_clean_exit();
    // Said before the DHT is joined, so a bootstrap nobody answers is enough to read it.
    let out = bin()
        .args([
            "share",
            "--port",
            "8080",
            "--identity",
            path.to_str().unwrap(),
        ])
        .args(["--bootstrap", &format!("127.0.0.1:{}", unused_udp_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret_bits=68") && stderr.contains("--key-derivation hashed"),
        "the npm key's weakness is said: {stderr}"
    );

    // Without an identity the key is new every run, as with the npm tool.
    let a = ShareProcess::start(&dht.bootstrap, 8080, &[]).key;
    let b = ShareProcess::start(&dht.bootstrap, 8080, &[]).key;
    assert_ne!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the npm rule, a 30-character host leaves none of the identity's secret in the share
/// key: anyone could derive it. Sharing refuses that unless told which key to use, and the
/// hashed key it offers depends on the secret.
#[test]
fn a_long_host_with_an_identity_needs_a_key_choice() {
    let dir = temp_dir("long-host");
    let path = dir.join("identity.json");
    std::fs::write(&path, NPM_IDENTITY_ABC).unwrap();
    let host = "a-thirty-character-host-name.x";
    assert_eq!(host.len(), 30);
    let identity = ["--identity", path.to_str().unwrap(), "--host", host];

    // Refused before anything is started, with the choices named (no DHT needed).
    let out = bin()
        .args(["share", "--port", "8080", "--bootstrap", "127.0.0.1:9"])
        .args(identity)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "shared with a guessable key: {stderr}"
    );
    assert!(
        stderr.contains("0 bits"),
        "says how little secret is left: {stderr}"
    );
    assert!(
        stderr.contains("--key-derivation hashed") && stderr.contains("--key-derivation npm"),
        "names the choices: {stderr}"
    );

    let dht = LocalDht::start(3);
    let share_with = |rule: &str| {
        let mut args = vec!["--port", "8080", "--key-derivation", rule];
        args.extend(identity);
        let mut share = ShareProcess::start_with(&dht.bootstrap, &args);
        share.terminate_and_expect_clean_exit();
        share.key.clone()
    };
    let hashed = share_with("hashed");
    assert_ne!(hashed, share_with("npm"));
    // Another identity behind the same host gets another hashed key.
    std::fs::remove_file(&path).unwrap();
    let out = bin()
        .args(["create-id", "--identity", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(hashed, share_with("hashed"));
    std::fs::remove_dir_all(&dir).unwrap();
}
