//! What several facade nodes share: state on Redis, blobs on an S3-compatible object store
//! or IPFS, and downloads coordinated across the cluster (leases in Redis, streaming from the
//! node that holds one).

pub mod ipfs;
