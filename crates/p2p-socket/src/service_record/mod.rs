//! Holesail's DHT record: what a share serves, as JSON `{"host","udp","port"}` in a signed
//! mutable record at the share's public key, so clients learn which port to listen on and
//! whether the share carries UDP (holesail-server 2.x `put`, holesail-client `connect`).
//!
//! This module is the record itself; [`keeper`] puts and reads it on the DHT.

mod keeper;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use keeper::RecordKeeper;

/// Longest record we read or write. Holesail documents records of up to 1 KB; a value from the
/// network longer than that is refused before it is parsed.
pub const MAX_RECORD_BYTES: usize = 1024;

/// Longest host name a record may carry (DNS's limit); a record is hostile input.
const MAX_HOST_LEN: usize = 253;

/// What a share serves, as holesail writes it in its DHT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The local service's host on the sharer's side. Holesail clients also listen on it
    /// (`127.0.0.1` when absent).
    pub host: Option<String>,
    /// The service's port: where clients listen by default.
    pub port: u16,
    /// Whether the share carries UDP datagrams instead of a TCP stream.
    pub udp: bool,
}

/// The record's JSON. Field order is holesail's (`JSON.stringify({ host, udp, port })`) so the
/// bytes match what a holesail server with the same service puts.
#[derive(Serialize)]
struct Written<'a> {
    host: Option<&'a str>,
    udp: bool,
    port: u16,
}

/// The record as read: every field optional and loosely typed, checked by hand after, so a
/// strange record from the network is a clear refusal, never a panic.
#[derive(Deserialize)]
struct Read {
    #[serde(default)]
    host: Option<serde_json::Value>,
    #[serde(default)]
    port: Option<serde_json::Value>,
    #[serde(default)]
    udp: Option<serde_json::Value>,
}

impl ServiceRecord {
    /// The record's bytes as they go on the DHT.
    pub fn to_bytes(&self) -> Vec<u8> {
        let written = Written {
            host: self.host.as_deref(),
            udp: self.udp,
            port: self.port,
        };
        // Serializing a struct of strings, bools and numbers cannot fail.
        serde_json::to_vec(&written).unwrap_or_default()
    }

    /// Reads a record from the network: at most [`MAX_RECORD_BYTES`], a JSON object whose
    /// `port` is a port number; `host` (a string) and `udp` (a boolean) may be absent, as
    /// holesail clients allow. Other fields are ignored.
    pub fn parse(bytes: &[u8]) -> Result<ServiceRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Invalid(format!(
                "{} bytes, more than {MAX_RECORD_BYTES}",
                bytes.len()
            )));
        }
        let read: Read = serde_json::from_slice(bytes)
            .map_err(|e| RecordError::Invalid(format!("not a JSON object ({e})")))?;
        let port = match read.port {
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
            _ => None,
        }
        .ok_or_else(|| RecordError::Invalid("no port number 1-65535 in it".into()))?;
        let host = match read.host {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(host))
                if !host.is_empty() && host.len() <= MAX_HOST_LEN =>
            {
                Some(host)
            }
            Some(_) => {
                return Err(RecordError::Invalid(format!(
                    "its host is not a host name of 1-{MAX_HOST_LEN} characters"
                )))
            }
        };
        let udp = match read.udp {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(udp)) => udp,
            Some(_) => return Err(RecordError::Invalid("its udp is not true or false".into())),
        };
        Ok(ServiceRecord { host, port, udp })
    }
}

/// Why no usable record was found.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// No DHT node holds a record (with a valid signature) for the key.
    #[error(
        "the sharer keeps no service record on the DHT (only holesail and p2p-socket shares do)"
    )]
    NotFound,
    /// A record was found but is not one we can use.
    #[error("the sharer's service record is unusable: {0}")]
    Invalid(String),
    /// Asking the DHT failed.
    #[error("could not read the service record")]
    Dht(#[source] crate::error::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_holesails_bytes() {
        let record = ServiceRecord {
            host: Some("127.0.0.1".into()),
            port: 8080,
            udp: false,
        };
        // What holesail-server puts for `{ host: '127.0.0.1', udp: false, port: 8080 }`.
        assert_eq!(
            record.to_bytes(),
            br#"{"host":"127.0.0.1","udp":false,"port":8080}"#
        );
        assert_eq!(ServiceRecord::parse(&record.to_bytes()).unwrap(), record);
    }

    #[test]
    fn reads_what_holesail_writes() {
        // holesail's CLI leaves `udp` undefined in TCP mode, and JSON.stringify drops it.
        let record = ServiceRecord::parse(br#"{"host":"localhost","port":3000}"#).unwrap();
        assert_eq!(
            record,
            ServiceRecord {
                host: Some("localhost".into()),
                port: 3000,
                udp: false
            }
        );
        let udp = ServiceRecord::parse(br#"{"host":"0.0.0.0","udp":true,"port":53,"x":[1]}"#);
        assert!(udp.unwrap().udp);
        assert_eq!(ServiceRecord::parse(br#"{"port":1}"#).unwrap().host, None);
    }

    #[test]
    fn refuses_hostile_records() {
        let too_long = format!(r#"{{"port":1,"host":"{}"}}"#, "a".repeat(MAX_RECORD_BYTES));
        let long_host = format!(r#"{{"port":1,"host":"{}"}}"#, "a".repeat(MAX_HOST_LEN + 1));
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let cases: &[&[u8]] = &[
            b"",
            b"null",
            b"[]",
            b"\"port\"",
            b"{}",
            br#"{"port":0}"#,
            br#"{"port":65536}"#,
            br#"{"port":-1}"#,
            br#"{"port":80.5}"#,
            br#"{"port":"80"}"#,
            br#"{"port":80,"udp":"yes"}"#,
            br#"{"port":80,"host":7}"#,
            br#"{"port":80,"host":""}"#,
            b"\xff\xfe{",
            too_long.as_bytes(),
            long_host.as_bytes(),
            deep.as_bytes(),
        ];
        for bytes in cases {
            let err = ServiceRecord::parse(bytes).unwrap_err();
            assert!(
                matches!(err, RecordError::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        for _ in 0..5000 {
            let len = rand::random::<u16>() as usize % (MAX_RECORD_BYTES + 64);
            let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            let _ = ServiceRecord::parse(&bytes);
        }
    }
}
