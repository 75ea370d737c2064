//! What the CLI does for holesail users: `share --secret` and `--qr`, the `hs://` strings share
//! prints, the service record it keeps, and `connect`'s use of that record when no `--port`
//! is given.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use p2p_socket::{
    ConnectionString, KeyPair, KeyString, NetworkOptions, PublicKey, RecordError, RecordKeeper,
    Service, ServiceRecord,
};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// `share --secret [KEY STRING]`: holesail's secure mode.
#[derive(clap::Args, Debug)]
pub struct SecretArgs {
    /// Secret mode (holesail's secure mode): the share's key pair is derived from a key string
    /// (`sha256` of it as the seed) and only clients that know the string can connect, with
    /// `connect --key hs://s000<key string>` or a holesail client; knowing the public key is
    /// not enough. Without a value a random key string is made (as holesail does); with one,
    /// that string (at least 32 characters), so the same string gives the same share.
    #[arg(
        long,
        value_name = "KEY STRING",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with_all = ["identity", "key_derivation", "seed", "private"]
    )]
    pub secret: Option<String>,
    /// Also print the connection string as a QR code (for a phone's camera).
    #[arg(long)]
    pub qr: bool,
}

impl SecretArgs {
    /// The key string of secret mode, made or checked; `None` when not in secret mode.
    pub fn key_string(&self) -> Result<Option<KeyString>> {
        match self.secret.as_deref() {
            None => Ok(None),
            Some("") => Ok(Some(KeyString::generate())),
            Some(chosen) => KeyString::chosen(chosen)
                .map(Some)
                .context("the --secret key string is not usable"),
        }
    }
}

/// Puts the record holesail clients read to learn the port and whether the share is UDP. A
/// share works without it, so a failure is a warning, not a stop.
pub async fn keep_record(
    network: &NetworkOptions,
    key_pair: KeyPair,
    host: &str,
    port: u16,
    udp: bool,
) -> Option<RecordKeeper> {
    let record = ServiceRecord {
        host: Some(host.to_string()),
        port,
        udp,
    };
    match RecordKeeper::start(network, key_pair, record).await {
        Ok(keeper) => Some(keeper),
        Err(e) => {
            tracing::warn!(error = %e, "could not put the service record on the DHT; connections still work, but clients without --port will not learn port {port} and pick their own");
            None
        }
    }
}

/// What a share shares, for [`print_share`].
pub struct Shared<'a> {
    pub service: &'a Service,
    pub udp: bool,
    pub key: PublicKey,
    pub secret: Option<&'a KeyString>,
    /// How a client names the share instead of `--key KEY` (hypertele's private mode).
    pub connect_with: Option<&'a str>,
}

/// The string a share hands out: `hs://s000<key string>` in secret mode, else the public
/// `hs://0000<z32 key>`.
pub fn connection_string(key: PublicKey, secret: Option<&KeyString>) -> ConnectionString {
    match secret {
        Some(secret) => ConnectionString::Secret(secret.clone()),
        None => ConnectionString::Public(key),
    }
}

/// What share prints for its peers: the key, the `hs://` string and how to connect.
pub fn print_share(shared: &Shared<'_>, qr: bool, bootstrap_flag: &str) {
    let Shared {
        service,
        udp,
        key,
        secret,
        connect_with,
    } = *shared;
    let string = connection_string(key, secret);
    let (udp_flag, udp_note) = if udp { (" --udp", " (UDP)") } else { ("", "") };
    println!("Sharing {service}{udp_note}. Key:");
    println!("{key}");
    println!("Connection string (holesail and p2p-socket): {string}");
    if secret.is_some() {
        println!("Secret mode: only clients with the connection string get in; the key alone is refused.");
    }
    let name = match (secret, connect_with) {
        (Some(_), _) => format!("--key {string}"),
        (None, Some(with)) => with.to_string(),
        (None, None) => format!("--key {key}"),
    };
    println!("On the other machine run:");
    let port = match service {
        Service::Tcp { port, .. } => port.to_string(),
        _ => "PORT".into(),
    };
    println!("  p2p-socket connect{udp_flag} --port {port} {name}{bootstrap_flag}");
    if qr {
        match qr_code(&string.to_string()) {
            Some(code) => println!("{code}"),
            None => {
                tracing::warn!("the connection string is too long for a QR code; copy it as text")
            }
        }
    }
}

/// The text as a QR code of Unicode half blocks, two rows of modules per line, with the quiet
/// zone scanners need. `None` only for a text too long for any QR code.
pub fn qr_code(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
    )
}

/// `connect --key`: the sharer's key, and the key pair to connect with where the string
/// prescribes one (secret mode).
pub fn connect_key(key: &str) -> Result<(PublicKey, Option<KeyPair>)> {
    let string: ConnectionString = key.parse().context("the --key is not usable")?;
    Ok((string.remote(), string.client_key_pair()))
}

/// Where connect listens: `--port` when given; else the port in the sharer's service record,
/// as holesail clients do; else (no record) a free one, said on stderr.
pub async fn listen_port(
    network: &NetworkOptions,
    remote: PublicKey,
    port: Option<u16>,
) -> Result<u16> {
    if let Some(port) = port {
        return Ok(port);
    }
    match ServiceRecord::lookup(network, remote).await {
        Ok(record) => {
            eprintln!(
                "The sharer serves port {}{}; listening on the same port (--port chooses another).",
                record.port,
                if record.udp { " (UDP)" } else { "" }
            );
            Ok(record.port)
        }
        // Connecting would fail the same way: say it once, now.
        Err(RecordError::Dht(e @ p2p_socket::Error::BootstrapUnreachable { .. })) => Err(e.into()),
        Err(e) => {
            eprintln!(
                "{:#}; listening on a free port instead (--port chooses one).",
                anyhow::Error::new(e)
            );
            Ok(0)
        }
    }
}

/// Whether listening on `host:port` failed only because the port is taken, in which case a
/// port learned from the record is given up for a free one.
pub fn port_taken(e: &p2p_socket::Error) -> bool {
    matches!(e, p2p_socket::Error::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}

/// The address to fall back to when the record's port is taken.
pub fn free_port_on(host: IpAddr, taken: u16) -> SocketAddr {
    eprintln!("Port {taken} (from the sharer's record) is in use here; listening on a free port instead (--port chooses one).");
    SocketAddr::new(host, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_code_of_a_connection_string_is_a_square_of_blocks() {
        let string = ConnectionString::Secret(KeyString::generate()).to_string();
        let code = qr_code(&string).unwrap();
        let lines: Vec<&str> = code.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        // Two module rows per line: about half as many lines as columns.
        assert!(lines.len() * 2 >= width && lines.len() * 2 <= width + 2);
        assert!(code
            .chars()
            .all(|c| " \u{2580}\u{2584}\u{2588}\n".contains(c)));
        assert!(qr_code(&"x".repeat(8000)).is_none());
    }
}
