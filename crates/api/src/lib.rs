//! Protobuf / gRPC API types for the registry facade and its peers.
//!
//! The `.proto` sources live in the workspace's `proto/` directory and are
//! compiled at build time with [`protox`](https://docs.rs/protox) (no `protoc`
//! needed) and `tonic-prost-build`. They are wire compatible with Gitpod's
//! APIs: same protobuf packages, service names, message names, field names
//! and field numbers.
//!
//! * [`registryfacade`] – `ImageSpec` and the `SpecProvider` service.
//! * [`builder`] – the `ImageBuilder` and `SubassemblyService` services.
//! * [`contentservice`] – `WorkspaceInitializer` and related messages
//!   (referenced by [`builder::BuildSourceDockerfile`]).
//!
//! The modules are siblings at the crate root because the generated code of
//! one package refers to another as `super::<package>`.
//!
//! Generated types only: it must not depend on any other crate of this workspace, so every
//! crate (and outside clients) can use the wire types without pulling in behaviour.

/// Protobuf package `registryfacade`: image specs and the spec provider service.
pub mod registryfacade {
    tonic::include_proto!("registryfacade");
}

/// Protobuf package `builder`: image builder and subassembly services.
// `build_source::From::File` is much larger than `Ref`; the generated oneof is
// left unboxed so callers can construct it directly.
#[allow(clippy::large_enum_variant)]
pub mod builder {
    tonic::include_proto!("builder");
}

/// Protobuf package `contentservice`: workspace initializers.
pub mod contentservice {
    tonic::include_proto!("contentservice");
}

/// Encoded `google.protobuf.FileDescriptorSet` covering every `.proto` file
/// of this crate (including source info), e.g. for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
