//! Single byte ranges of the `Range` header (RFC 9110 §14.1.2), as blob endpoints need them.

/// A parsed `bytes=` range, before the resource size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (b inclusive)
    Bounded(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// The header is not a single `bytes=` range we understand: serve the whole resource.
    Ignored,
    /// No byte of the resource is selected: 416.
    Unsatisfiable,
}

impl ByteRange {
    /// Parses a `Range` header value. Multiple ranges and other units are `Ignored`
    /// (the full body is a valid answer to those).
    pub fn parse(value: &str) -> Result<ByteRange, RangeError> {
        let spec = value
            .trim()
            .strip_prefix("bytes=")
            .ok_or(RangeError::Ignored)?;
        if spec.contains(',') {
            return Err(RangeError::Ignored);
        }
        let (a, b) = spec.trim().split_once('-').ok_or(RangeError::Ignored)?;
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| RangeError::Ignored);
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => Err(RangeError::Ignored),
            (true, false) => Ok(ByteRange::Suffix(num(b)?)),
            (false, true) => Ok(ByteRange::From(num(a)?)),
            (false, false) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    Err(RangeError::Unsatisfiable)
                } else {
                    Ok(ByteRange::Bounded(a, b))
                }
            }
        }
    }

    /// The inclusive `(first, last)` byte positions within a resource of `size` bytes,
    /// clamping an end past the size.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), RangeError> {
        match self {
            ByteRange::Bounded(a, _) | ByteRange::From(a) if a >= size => {
                Err(RangeError::Unsatisfiable)
            }
            ByteRange::Bounded(a, b) => Ok((a, b.min(size - 1))),
            ByteRange::From(a) => Ok((a, size - 1)),
            ByteRange::Suffix(0) => Err(RangeError::Unsatisfiable),
            ByteRange::Suffix(_) if size == 0 => Err(RangeError::Unsatisfiable),
            ByteRange::Suffix(n) => Ok((size.saturating_sub(n), size - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, size: u64) -> Result<(u64, u64), RangeError> {
        ByteRange::parse(v).and_then(|r| r.resolve(size))
    }

    #[test]
    fn conformance_cases() {
        assert_eq!(r("bytes=500-1499", 2048), Ok((500, 1499)));
        assert_eq!(r("bytes=500-", 2048), Ok((500, 2047)));
        assert_eq!(r("bytes=-500", 2048), Ok((1548, 2047)));
        assert_eq!(r("bytes=2000-5000", 2048), Ok((2000, 2047)));
        assert_eq!(r("bytes=500-0", 2048), Err(RangeError::Unsatisfiable));
        assert_eq!(r("bytes=5000-10000", 2048), Err(RangeError::Unsatisfiable));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(r("bytes=-5000", 2048), Ok((0, 2047)));
        assert_eq!(r("bytes=0-0", 1), Ok((0, 0)));
        assert_eq!(r("bytes=0-", 0), Err(RangeError::Unsatisfiable));
        assert_eq!(r("bytes=-0", 10), Err(RangeError::Unsatisfiable));
        assert_eq!(r("bytes=0-1,3-4", 10), Err(RangeError::Ignored));
        assert_eq!(r("items=0-1", 10), Err(RangeError::Ignored));
        assert_eq!(r("bytes=a-b", 10), Err(RangeError::Ignored));
        assert_eq!(r("bytes=-", 10), Err(RangeError::Ignored));
    }
}
