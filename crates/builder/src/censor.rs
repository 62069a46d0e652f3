//! Log censoring: every occurrence of a secret (password, token, base64 `user:password`) or
//! of a censored reference is replaced by [`REDACTED`], also when it is split across the
//! chunks of a byte stream.
//!
//! Gitpod (`monitor.go`) censors `[wsref, baseref, wsref up to the first ':', baseref up to
//! the first ':']` by replacing them with nothing. With a registry port the "up to the first
//! ':'" part is just the host (`localhost:5000/ws:tag` ⇒ `localhost`), so every `localhost` in
//! the log vanished and the repository name was not censored (§8 item 27). We censor each ref
//! as given and its repository name ([`crate::refs::ref_name`], port kept), and write
//! `[redacted]` so that readers see something was removed.
//!
//! Matching is leftmost-longest: at each position the longest word that starts there is
//! replaced, then the scan continues after it. [`CensorStream`] keeps the last
//! `max word length - 1` bytes of a chunk back until the next chunk (or [`CensorStream::finish`])
//! shows whether they begin a word, so its output equals censoring the concatenated input in
//! one piece.

use std::sync::Arc;

use crate::refs::ref_name;

/// What a censored word is replaced with.
pub const REDACTED: &str = "[redacted]";

/// A set of words to censor. Cheap to share (`Arc`) between streams.
#[derive(Clone, Default)]
pub struct Censor {
    /// Non-empty, distinct, longest first.
    words: Vec<Vec<u8>>,
    /// Whether a byte starts some word.
    first: Box<[bool]>,
    max_len: usize,
}

impl std::fmt::Debug for Censor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Censor")
            .field("words", &self.words.len())
            .finish_non_exhaustive()
    }
}

impl Censor {
    /// A censor for `words` (empty words are ignored).
    pub fn new<I, W>(words: I) -> Censor
    where
        I: IntoIterator<Item = W>,
        W: AsRef<[u8]>,
    {
        let mut words: Vec<Vec<u8>> = words
            .into_iter()
            .map(|w| w.as_ref().to_vec())
            .filter(|w| !w.is_empty())
            .collect();
        words.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        words.dedup();
        let mut first = vec![false; 256].into_boxed_slice();
        for w in &words {
            first[w[0] as usize] = true;
        }
        let max_len = words.first().map_or(0, Vec::len);
        Censor {
            words,
            first,
            max_len,
        }
    }

    /// The words for a build: the workspace and base refs and their repository names, plus
    /// `secrets` (see [`crate::auth::RequestAuth::secrets`], [`crate::auth::BuildAuth::secrets`]).
    pub fn for_build<S: AsRef<str>>(
        workspace_ref: &str,
        base_ref: &str,
        secrets: impl IntoIterator<Item = S>,
    ) -> Censor {
        let mut words: Vec<String> = Vec::new();
        for r in [workspace_ref, base_ref] {
            if !r.is_empty() {
                words.push(r.to_string());
                words.push(ref_name(r).to_string());
            }
        }
        words.extend(secrets.into_iter().map(|s| s.as_ref().to_string()));
        Censor::new(words)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The longest word starting at `data[i..]` that fits in `data`.
    fn match_at(&self, data: &[u8], i: usize) -> Option<usize> {
        if !self.first[data[i] as usize] {
            return None;
        }
        let rest = &data[i..];
        self.words
            .iter()
            .find(|w| rest.starts_with(w))
            .map(Vec::len)
    }

    /// Censors `data[..]` up to `limit` (positions ≥ `limit` are not decided); returns the
    /// position where undecided input starts.
    fn scan(&self, data: &[u8], limit: usize, out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        let mut copied = 0;
        while i < limit {
            match self.match_at(data, i) {
                Some(len) => {
                    out.extend_from_slice(&data[copied..i]);
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += len;
                    copied = i;
                }
                None => i += 1,
            }
        }
        out.extend_from_slice(&data[copied..i.min(data.len())]);
        i
    }

    /// `data` with every word replaced.
    pub fn censor(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        if self.words.is_empty() {
            out.extend_from_slice(data);
            return out;
        }
        self.scan(data, data.len(), &mut out);
        out
    }

    /// `text` with every word replaced (e.g. an error message).
    pub fn censor_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.censor(text.as_bytes())).into_owned()
    }

    /// A streaming censor over this word set.
    pub fn stream(self: &Arc<Self>) -> CensorStream {
        CensorStream {
            censor: self.clone(),
            tail: Vec::new(),
        }
    }
}

/// Censors a byte stream chunk by chunk; a word split across chunks is still found.
#[derive(Debug)]
pub struct CensorStream {
    censor: Arc<Censor>,
    /// Input not yet decided (at most `max_len - 1` bytes).
    tail: Vec<u8>,
}

impl CensorStream {
    /// Censors what can be decided of `tail + chunk`; keeps the rest back.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let c = &self.censor;
        let mut data = std::mem::take(&mut self.tail);
        data.extend_from_slice(chunk);
        if c.words.is_empty() {
            return data;
        }
        let mut out = Vec::with_capacity(data.len());
        // A word starting before `limit` ends within `data`, so it can be decided now.
        let limit = data.len().saturating_sub(c.max_len - 1);
        let next = c.scan(&data, limit, &mut out);
        // `scan` copied up to `next` (or up to the end of a word that crossed `limit`).
        if next < data.len() {
            self.tail = data[next..].to_vec();
        }
        out
    }

    /// Censors and returns what was kept back; call at the end of the stream.
    pub fn finish(mut self) -> Vec<u8> {
        let data = std::mem::take(&mut self.tail);
        self.censor.censor(&data)
    }

    /// Bytes currently kept back.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(words: &[&str]) -> Arc<Censor> {
        Arc::new(Censor::new(words))
    }

    fn streamed(censor: &Arc<Censor>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = censor.stream();
        let mut out = Vec::new();
        for ch in chunks {
            out.extend(s.push(ch));
            assert!(s.pending() < censor.max_len.max(1));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn replaces_every_occurrence() {
        let censor = c(&["hunter2", "s3cret"]);
        assert_eq!(
            censor.censor_str("pw=hunter2 and hunter2hunter2, s3cret!"),
            "pw=[redacted] and [redacted][redacted], [redacted]!"
        );
        assert_eq!(censor.censor_str("nothing here"), "nothing here");
        assert_eq!(censor.censor_str(""), "");
        assert_eq!(c(&[]).censor_str("hunter2"), "hunter2");
        assert_eq!(c(&[""]).censor_str("abc"), "abc");
    }

    #[test]
    fn longest_match_wins() {
        let censor = c(&["localhost:5000/ws", "localhost:5000/ws:abc"]);
        assert_eq!(
            censor.censor_str(
                "push localhost:5000/ws:abc ok; repo localhost:5000/ws; host localhost"
            ),
            "push [redacted] ok; repo [redacted]; host localhost"
        );
    }

    #[test]
    fn build_words_keep_the_registry_port() {
        let censor = Censor::for_build(
            "localhost:5000/workspace-images:0123abcd",
            "registry.example:443/base@sha256:feed",
            ["tok-3n"],
        );
        let log = "pushing localhost:5000/workspace-images:0123abcd\nFROM registry.example:443/base@sha256:feed\nrepo localhost:5000/workspace-images\nconnecting to localhost\nauth tok-3n\n";
        assert_eq!(
            censor.censor_str(log),
            "pushing [redacted]\nFROM [redacted]\nrepo [redacted]\nconnecting to localhost\nauth [redacted]\n"
        );
        assert!(Censor::for_build("", "", Vec::<String>::new()).is_empty());
    }

    #[test]
    fn secrets_split_across_chunks() {
        let censor = c(&["hunter2", "abc"]);
        let out = streamed(
            &censor,
            &[b"pw=hun", b"ter2 x", b"yz ab", b"c", b" end h", b"unte"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "pw=[redacted] xyz [redacted] end hunte"
        );
        // One byte at a time.
        let input = b"hunter2hunter2 abab abc hunter";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(streamed(&censor, &chunks), censor.censor(input));
    }

    #[test]
    fn streaming_equals_whole_for_every_split() {
        let censor = c(&["secret", "sec", "cre", "ret!", "aaa", "[redacted]"]);
        let input = b"xsecret!secsecretaaaaretcresecre[redacted]t secre";
        let whole = censor.censor(input);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let out = streamed(&censor, &[&input[..a], &input[a..b], &input[b..]]);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&whole),
                    "split at {a},{b}"
                );
            }
        }
        // Pseudo-random chunkings of a longer input.
        let long: Vec<u8> = (0..2000u32)
            .map(|i| b"secret!aerc"[(i.wrapping_mul(2654435761) >> 7) as usize % 11])
            .collect();
        let whole = censor.censor(&long);
        let mut seed = 7u64;
        for _ in 0..50 {
            let mut chunks = Vec::new();
            let mut pos = 0;
            while pos < long.len() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let n = 1 + (seed >> 59) as usize;
                let end = (pos + n).min(long.len());
                chunks.push(&long[pos..end]);
                pos = end;
            }
            assert_eq!(streamed(&censor, &chunks), whole);
        }
    }

    #[test]
    fn binary_and_non_utf8_data_passes_through() {
        let censor = c(&["\u{e9}t\u{e9}"]);
        let data = [0xff, 0x00, b'x', 0xc3, 0xa9, b't', 0xc3, 0xa9, 0xfe];
        assert_eq!(
            censor.censor(&data),
            [&[0xff, 0x00, b'x'][..], REDACTED.as_bytes(), &[0xfe]].concat()
        );
        let out = streamed(&censor, &[&data[..4], &data[4..7], &data[7..]]);
        assert_eq!(out, censor.censor(&data));
    }
}
