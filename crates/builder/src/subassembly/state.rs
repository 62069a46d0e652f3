//! The persisted state machine of subassemblies: one record per source image
//! (`CREATING` → `AVAILABLE` | `UNAVAILABLE`, and back to `CREATING` when created again), the
//! reference map, and their files under `<root>/records` and `<root>/refs.json`.
//!
//! Every change bumps a version; files are written (on blocking threads, never under the
//! state lock) one at a time, each of the latest state of its record, so a slower write never
//! replaces a newer one. A record still `CREATING` when the state is opened was interrupted: it
//! becomes `UNAVAILABLE`.
//!
//! Knows nothing of gRPC or HTTP: it answers with [`View`]s.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rf_oci::Digest;
use serde::{Deserialize, Serialize};

use super::types::{io_err, SubassemblyError, SubassemblyManifest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Phase {
    Creating,
    Available,
    Unavailable,
}

/// One subassembly, persisted as `records/<alg>-<hex>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Record {
    /// Digest of the source image manifest (the key).
    pub(super) source_digest: Digest,
    /// `<name>@<digest>`.
    pub(super) source: String,
    /// The reference of the last CreateSubassembly.
    pub(super) reference: String,
    pub(super) phase: Phase,
    #[serde(default)]
    pub(super) message: String,
    /// The manifest document, exactly as served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) manifest: Option<String>,
}

impl Record {
    fn parsed_manifest(&self) -> Option<SubassemblyManifest> {
        serde_json::from_str(self.manifest.as_deref()?).ok()
    }
}

pub(super) struct Entry {
    pub(super) record: Record,
    /// Parsed from `record.manifest` when available.
    pub(super) manifest: Option<SubassemblyManifest>,
    /// Bumped (from [`StateMap::version`]) whenever `record` changes.
    pub(super) version: u64,
}

#[derive(Default)]
pub(super) struct StateMap {
    /// Source image digest → subassembly.
    pub(super) entries: HashMap<Digest, Entry>,
    /// Layer digest → source image digest (available subassemblies).
    pub(super) by_layer: HashMap<Digest, Digest>,
    /// Normalised reference → source image digest of its last CreateSubassembly.
    pub(super) refs: HashMap<String, Digest>,
    /// Normalised reference → why its last CreateSubassembly could not resolve it.
    pub(super) failed: HashMap<String, String>,
    /// The version of `refs` (bumped from `version` whenever it changes).
    pub(super) refs_version: u64,
    /// The last version handed out.
    version: u64,
}

impl StateMap {
    pub(super) fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

/// The versions on disk (what was last written of each record, and of the reference map).
#[derive(Default)]
struct Persisted {
    records: HashMap<Digest, u64>,
    refs: u64,
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync of the directory).
/// Blocking.
pub(super) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    let res = res.and_then(|()| match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// What a record says, for answers.
#[derive(Debug, Clone)]
pub(super) enum View {
    Available {
        /// The layer digest.
        layer: Digest,
        /// The manifest document, exactly as served.
        document: String,
    },
    Creating {
        source: String,
    },
    Unavailable {
        message: String,
    },
}

fn view(e: &Entry) -> View {
    let r = &e.record;
    match (r.phase, &e.manifest) {
        (Phase::Available, Some(m)) => View::Available {
            layer: m.digest.clone(),
            document: r.manifest.clone().unwrap_or_default(),
        },
        (Phase::Creating, _) => View::Creating {
            source: r.source.clone(),
        },
        _ => View::Unavailable {
            message: r.message.clone(),
        },
    }
}

/// What [`State::begin`] decided.
pub(super) struct Begin {
    pub(super) view: View,
    /// The reference map changed (and must be persisted).
    pub(super) refs_changed: bool,
    /// A new creation is to start (the record is `CREATING`, not yet persisted).
    pub(super) start: bool,
}

/// The state of all subassemblies, in memory and on disk.
pub(super) struct State {
    root: PathBuf,
    map: Mutex<StateMap>,
    /// Held while writing state files: writes are serialised, each writes the latest state
    /// (never under `map`, never on a runtime worker thread).
    persisted: tokio::sync::Mutex<Persisted>,
}

impl State {
    /// Loads the records and the reference map under `root` (creating `records/`), marking
    /// the interrupted records. Blocking.
    pub(super) fn open(root: &Path) -> Result<State, SubassemblyError> {
        let records = root.join("records");
        std::fs::create_dir_all(&records).map_err(io_err(&records))?;
        let mut state = StateMap::default();
        for dirent in std::fs::read_dir(&records).map_err(io_err(&records))? {
            let path = dirent.map_err(io_err(&records))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.contains(".tmp.") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let mut record: Record = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable subassembly record: {e}");
                    continue;
                }
            };
            if record.phase == Phase::Creating {
                record.phase = Phase::Unavailable;
                record.message = "interrupted by a restart; call CreateSubassembly again".into();
                write_atomic(&path, &serde_json::to_vec_pretty(&record).expect("json"))
                    .map_err(io_err(&path))?;
                tracing::info!(source = %record.source, "subassembly creation was interrupted by a restart");
            }
            let manifest = match record.phase {
                Phase::Available => record.parsed_manifest(),
                _ => None,
            };
            if record.phase == Phase::Available && manifest.is_none() {
                record.phase = Phase::Unavailable;
                record.message =
                    "the stored subassembly manifest is unreadable; call CreateSubassembly again"
                        .into();
            }
            if let Some(m) = &manifest {
                state
                    .by_layer
                    .insert(m.digest.clone(), record.source_digest.clone());
            }
            state.entries.insert(
                record.source_digest.clone(),
                Entry {
                    record: record.clone(),
                    manifest,
                    version: 0,
                },
            );
        }
        let refs_path = root.join("refs.json");
        match std::fs::read(&refs_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(refs) => state.refs = refs,
                Err(e) => {
                    tracing::warn!(path = %refs_path.display(), "ignoring unreadable reference map: {e}")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&refs_path)(e)),
        }
        Ok(State {
            root: root.to_path_buf(),
            map: Mutex::new(state),
            persisted: tokio::sync::Mutex::new(Persisted::default()),
        })
    }

    /// The state in memory, for tests that stage states (never held across an await).
    #[cfg(test)]
    pub(super) fn lock(&self) -> parking_lot::MutexGuard<'_, StateMap> {
        self.map.lock()
    }

    /// How many subassemblies are known.
    pub(super) fn len(&self) -> usize {
        self.map.lock().entries.len()
    }

    pub(super) fn record_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("records").join(format!(
            "{}-{}.json",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Writes the record of `source` as it is now, unless that version is on disk already.
    /// Writes are serialised and each takes the latest state, so an older one never
    /// overwrites a newer one; the file is written on a blocking thread.
    pub(super) async fn persist_record(&self, source: &Digest) -> io::Result<()> {
        let mut done = self.persisted.lock().await;
        let (data, version) = {
            let st = self.map.lock();
            let Some(e) = st.entries.get(source) else {
                return Ok(());
            };
            (
                serde_json::to_vec_pretty(&e.record).expect("json"),
                e.version,
            )
        };
        if done.records.get(source).is_some_and(|v| *v >= version) {
            return Ok(());
        }
        let path = self.record_path(source);
        tokio::task::spawn_blocking(move || write_atomic(&path, &data))
            .await
            .map_err(io::Error::other)??;
        done.records.insert(source.clone(), version);
        Ok(())
    }

    /// [`Self::persist_record`] for the reference map (`refs.json`).
    pub(super) async fn persist_refs(&self) -> io::Result<()> {
        let mut done = self.persisted.lock().await;
        let (data, version) = {
            let st = self.map.lock();
            (
                serde_json::to_vec_pretty(&st.refs).expect("json"),
                st.refs_version,
            )
        };
        if done.refs >= version {
            return Ok(());
        }
        let path = self.root.join("refs.json");
        tokio::task::spawn_blocking(move || write_atomic(&path, &data))
            .await
            .map_err(io::Error::other)??;
        done.refs = version;
        Ok(())
    }

    /// [`Self::persist_record`], failures logged.
    pub(super) async fn persist_logged(&self, source: &Digest) {
        if let Err(err) = self.persist_record(source).await {
            tracing::warn!(%source, "cannot persist subassembly record: {err}");
        }
    }

    /// The layer digest of an available subassembly of `source`, if any.
    pub(super) fn available_layer(&self, source: &Digest) -> Option<Digest> {
        let st = self.map.lock();
        let e = st.entries.get(source)?;
        match (e.record.phase, &e.manifest) {
            (Phase::Available, Some(m)) => Some(m.digest.clone()),
            _ => None,
        }
    }

    /// What the record of `source` says.
    pub(super) fn view(&self, source: &Digest) -> Option<View> {
        self.map.lock().entries.get(source).map(view)
    }

    /// The manifest of an available subassembly by layer digest.
    pub(super) fn manifest_by_layer(&self, layer: &Digest) -> Option<String> {
        let st = self.map.lock();
        let source = st.by_layer.get(layer)?;
        let e = st.entries.get(source)?;
        match e.record.phase {
            Phase::Available => e.record.manifest.clone(),
            _ => None,
        }
    }

    /// A digest reference known without asking a registry: a subassembly's source image,
    /// else what the last CreateSubassembly of `key` resolved to.
    pub(super) fn known_digest(&self, digest: &Digest, key: &str) -> Option<Digest> {
        let st = self.map.lock();
        if st.entries.contains_key(digest) {
            Some(digest.clone())
        } else {
            st.refs.get(key).cloned()
        }
    }

    /// The source image digest the last CreateSubassembly of `key` resolved to.
    pub(super) fn last_created(&self, key: &str) -> Option<Digest> {
        self.map.lock().refs.get(key).cloned()
    }

    /// Why the last CreateSubassembly of `key` could not resolve it.
    pub(super) fn resolve_failure(&self, key: &str) -> Option<String> {
        self.map.lock().failed.get(key).cloned()
    }

    /// Remembers (in memory) why CreateSubassembly could not resolve `key`.
    pub(super) fn resolve_failed(&self, key: String, message: String) {
        self.map.lock().failed.insert(key, message);
    }

    /// CreateSubassembly of `key`, resolved to the image `pinned` (`<name>@<digest>`):
    /// records the reference, joins a creation in progress or an available subassembly
    /// (unless its layer is missing), else makes a new `CREATING` record.
    pub(super) fn begin(
        &self,
        key: &str,
        digest: &Digest,
        pinned: &str,
        layer_missing: bool,
    ) -> Begin {
        let mut st = self.map.lock();
        st.failed.remove(key);
        let refs_changed = st.refs.get(key) != Some(digest);
        if refs_changed {
            st.refs.insert(key.to_string(), digest.clone());
            st.refs_version = st.bump();
        }
        let existing = st.entries.get(digest).and_then(|e| match e.record.phase {
            Phase::Creating => {
                tracing::debug!(reference = %key, source = %pinned, "CreateSubassembly joins the running creation");
                Some(view(e))
            }
            // also when a creation ended AVAILABLE since `layer_missing` was computed
            Phase::Available if !layer_missing => Some(view(e)),
            _ => None,
        });
        if let Some(view) = existing {
            return Begin {
                view,
                refs_changed,
                start: false,
            };
        }
        let entry = Entry {
            record: Record {
                source_digest: digest.clone(),
                source: pinned.to_string(),
                reference: key.to_string(),
                phase: Phase::Creating,
                message: String::new(),
                manifest: None,
            },
            manifest: None,
            version: st.bump(),
        };
        let v = view(&entry);
        st.entries.insert(digest.clone(), entry);
        Begin {
            view: v,
            refs_changed,
            start: true,
        }
    }

    /// A creation that could not start (its record could not be written).
    pub(super) fn start_failed(&self, source: &Digest, message: &str) {
        let mut st = self.map.lock();
        let version = st.bump();
        if let Some(e) = st.entries.get_mut(source) {
            e.record.phase = Phase::Unavailable;
            e.record.message = message.to_string();
            e.version = version;
        }
    }

    /// Marks an available subassembly whose layer has gone from the store unavailable.
    pub(super) async fn mark_missing(&self, source: &Digest) {
        {
            let mut st = self.map.lock();
            let version = st.bump();
            let StateMap {
                entries, by_layer, ..
            } = &mut *st;
            // (a creation may have started again meanwhile)
            let Some(e) = entries
                .get_mut(source)
                .filter(|e| e.record.phase == Phase::Available)
            else {
                return;
            };
            if let Some(m) = e.manifest.take() {
                by_layer.remove(&m.digest);
            }
            e.record.phase = Phase::Unavailable;
            e.record.message =
                "the stored subassembly layer is missing; call CreateSubassembly again".into();
            e.version = version;
        }
        self.persist_logged(source).await;
    }

    /// The end of a creation: `AVAILABLE` with the manifest, or `UNAVAILABLE` with why.
    pub(super) async fn finish(&self, source: &Digest, res: Result<SubassemblyManifest, String>) {
        {
            let mut st = self.map.lock();
            let version = st.bump();
            let StateMap {
                entries, by_layer, ..
            } = &mut *st;
            let Some(e) = entries.get_mut(source) else {
                return;
            };
            match res {
                Ok(m) => {
                    let json = serde_json::to_string_pretty(&m).expect("json");
                    tracing::info!(source = %e.record.source, digest = %m.digest, size = m.size, "subassembly available");
                    by_layer.insert(m.digest.clone(), source.clone());
                    e.record.phase = Phase::Available;
                    e.record.message = String::new();
                    e.record.manifest = Some(json);
                    e.manifest = Some(m);
                }
                Err(msg) => {
                    tracing::warn!(source = %e.record.source, "subassembly unavailable: {msg}");
                    e.record.phase = Phase::Unavailable;
                    e.record.message = format!(
                        "cannot create the subassembly of {}: {msg}",
                        e.record.reference
                    );
                    e.record.manifest = None;
                    e.manifest = None;
                }
            }
            e.version = version;
        }
        self.persist_logged(source).await;
    }
}
