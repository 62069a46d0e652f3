//! CIDs as the facade stores them (Redis `<digest>` = CID): checked before they reach the
//! node, because a malformed or foreign value would make `cat` fail late or hang.

use std::fmt;

use super::error::IpfsError;

/// The multicodec of a UnixFS node (what `add` answers for a file of several chunks).
pub const CODEC_DAG_PB: u64 = 0x70;
/// The multicodec of a raw block (what `add` with raw leaves answers for a one-chunk file).
pub const CODEC_RAW: u64 = 0x55;
const MULTIHASH_SHA2_256: u64 = 0x12;

/// A content identifier: a CIDv1 in base32 (multibase prefix `b`, what Gitpod stores and what
/// `add` answers with `cid-base=base32`) whose multihash is well formed, or a CIDv0 (`Qm…`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cid {
    text: String,
    version: u8,
    codec: u64,
}

impl Cid {
    /// Parses the text form; the text is kept as given.
    pub fn parse(text: &str) -> Result<Cid, IpfsError> {
        let bad = |reason: &str| IpfsError::InvalidCid {
            cid: text.chars().take(100).collect(),
            reason: reason.to_string(),
        };
        if text.len() == 46 && text.starts_with("Qm") {
            const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
            if !text.chars().all(|c| BASE58.contains(c)) {
                return Err(bad("a CIDv0 is base58btc"));
            }
            return Ok(Cid {
                text: text.to_string(),
                version: 0,
                codec: CODEC_DAG_PB,
            });
        }
        let body = text.strip_prefix('b').ok_or_else(|| {
            bad("only CIDv1 in base32 (prefix `b`) or CIDv0 (`Qm…`) are accepted")
        })?;
        let bytes = base32_decode(body).ok_or_else(|| bad("not lower-case base32"))?;
        let mut rest = bytes.as_slice();
        let version = read_varint(&mut rest).ok_or_else(|| bad("truncated version"))?;
        if version != 1 {
            return Err(bad(&format!("CID version {version}, expected 1")));
        }
        let codec = read_varint(&mut rest).ok_or_else(|| bad("truncated codec"))?;
        let hash_fn = read_varint(&mut rest).ok_or_else(|| bad("truncated multihash"))?;
        let len = read_varint(&mut rest).ok_or_else(|| bad("truncated multihash"))?;
        if rest.len() as u64 != len {
            return Err(bad(&format!(
                "the multihash says {len} digest bytes, {} follow",
                rest.len()
            )));
        }
        if hash_fn == MULTIHASH_SHA2_256 && len != 32 {
            return Err(bad("a sha2-256 digest has 32 bytes"));
        }
        Ok(Cid {
            text: text.to_string(),
            version: 1,
            codec,
        })
    }

    /// The text form, as parsed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// 0 or 1.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The multicodec of the root block ([`CODEC_DAG_PB`], [`CODEC_RAW`], ...).
    pub fn codec(&self) -> u64 {
        self.codec
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({})", self.text)
    }
}

impl std::str::FromStr for Cid {
    type Err = IpfsError;
    fn from_str(s: &str) -> Result<Cid, IpfsError> {
        Cid::parse(s)
    }
}

/// RFC 4648 base32, lower case, no padding (multibase `b`). None for any other character or
/// for trailing bits that are not zero (so each byte string has one spelling).
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 5 && acc == 0).then_some(out)
}

/// An unsigned LEB128 varint of at most 9 bytes (the multiformats limit).
fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(9) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_cids() {
        // the empty file with raw leaves, and the empty UnixFS directory, as kubo prints them
        let raw =
            Cid::parse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku").unwrap();
        assert_eq!((raw.version(), raw.codec()), (1, CODEC_RAW));
        let dir =
            Cid::parse("bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354").unwrap();
        assert_eq!((dir.version(), dir.codec()), (1, CODEC_DAG_PB));
        let v0 = Cid::parse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn").unwrap();
        assert_eq!(v0.version(), 0);
        assert_eq!(
            v0.to_string(),
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
        );
    }

    #[test]
    fn malformed_cids_are_refused() {
        for bad in [
            "",
            "b",
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk", // one char short
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvykuaa", // extra bytes
            "BAFKREIHDWDCEFGH4DQKJV67UZCMW7OJEE6XEDZDETOJUZJEVTENXQUVYKU", // base32 upper
            "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA",          // base58 v1
            "sha256:0123",
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3N0", // 0 is not base58
            "../../etc/passwd",
        ] {
            let e = Cid::parse(bad).unwrap_err();
            assert!(matches!(e, IpfsError::InvalidCid { .. }), "{bad}: {e}");
        }
    }
}
