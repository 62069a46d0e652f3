//! `Accept` header negotiation for manifests, with q-values, as distribution does it.

use crate::media;

/// The media types a client said it accepts.
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// (media type, q) pairs; empty means the client sent no usable `Accept`.
    entries: Vec<(String, f32)>,
}

impl Accept {
    /// Parses every `Accept` header value (comma-separated lists, `;q=` parameters).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Accept {
        let mut entries = Vec::new();
        for value in values {
            for item in value.split(',') {
                let mut parts = item.split(';');
                let mt = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if mt.is_empty() {
                    continue;
                }
                let mut q = 1.0f32;
                for p in parts {
                    if let Some((k, v)) = p.split_once('=') {
                        if k.trim().eq_ignore_ascii_case("q") {
                            q = v.trim().parse().unwrap_or(1.0);
                        }
                    }
                }
                entries.push((mt, q));
            }
        }
        Accept { entries }
    }

    /// Whether the client named no media type at all (distribution then serves what it has).
    pub fn is_unspecified(&self) -> bool {
        self.entries.is_empty()
    }

    /// The q-value the client gives `media_type` (0 when not acceptable).
    pub fn quality(&self, media_type: &str) -> f32 {
        if self.entries.is_empty() {
            return 1.0;
        }
        let (top, _) = media_type.split_once('/').unwrap_or((media_type, ""));
        let mut best: Option<(u8, f32)> = None;
        for (mt, q) in &self.entries {
            let specificity = if mt == media_type {
                3
            } else if mt.strip_suffix("/*") == Some(top) {
                2
            } else if mt == "*/*" || mt == "*" {
                1
            } else {
                continue;
            };
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, *q));
            }
        }
        best.map_or(0.0, |(_, q)| q)
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.quality(media_type) > 0.0
    }

    /// Whether the client explicitly accepts an index type (wildcards do not count: Docker and
    /// containerd list index types by name, and old clients that send `*/*` expect one image).
    pub fn accepts_index_explicitly(&self, index_media_type: &str) -> bool {
        self.entries
            .iter()
            .any(|(mt, q)| mt == index_media_type && *q > 0.0)
            || (index_media_type == media::OCI_INDEX
                && self
                    .entries
                    .iter()
                    .any(|(mt, q)| mt == media::DOCKER_LIST && *q > 0.0))
            || (index_media_type == media::DOCKER_LIST
                && self
                    .entries
                    .iter()
                    .any(|(mt, q)| mt == media::OCI_INDEX && *q > 0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::*;

    #[test]
    fn wildcard_and_missing() {
        assert!(Accept::parse([]).accepts(OCI_MANIFEST));
        assert!(Accept::parse(["*/*"]).accepts(OCI_MANIFEST));
        assert!(Accept::parse(["application/*"]).accepts(DOCKER_MANIFEST));
        assert!(!Accept::parse(["text/plain"]).accepts(OCI_MANIFEST));
    }

    #[test]
    fn q_values_and_lists() {
        let a = Accept::parse([
            &*format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0"),
            "*/*;q=0.5",
        ]);
        assert!(a.accepts(DOCKER_MANIFEST));
        assert!(!a.accepts(OCI_MANIFEST), "explicit q=0 beats the wildcard");
        assert_eq!(a.quality(OCI_INDEX), 0.5);
        assert!(!a.accepts_index_explicitly(OCI_INDEX));
        let c = Accept::parse([&*format!(
            "{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"
        )]);
        assert!(c.accepts_index_explicitly(OCI_INDEX));
        assert!(Accept::parse([DOCKER_LIST]).accepts_index_explicitly(OCI_INDEX));
    }
}
