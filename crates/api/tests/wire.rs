//! Wire-format checks against byte strings worked out by hand from the
//! protobuf encoding rules (tag = field_number << 3 | wire_type; wire type 0
//! is varint, 2 is length-delimited). These pin field numbers and types, so
//! a renumbered field in `proto/` fails here instead of silently breaking
//! interoperability with Gitpod components.

use prost::Message;
use rf_api::builder::{
    build_registry_auth, BuildInfo, BuildRegistryAuth, BuildRegistryAuthTotal, BuildRequest,
    BuildResponse, BuildStatus, LogsRequest, ResolveBaseImageRequest, SubassemblyPhase,
    SubassemblyStatus,
};
use rf_api::contentservice::{
    workspace_initializer, CloneTargetMode, GitInitializer, WorkspaceInitializer,
};
use rf_api::registryfacade::{
    content_layer, ContentLayer, DirectContentLayer, GetImageSpecResponse, ImageSpec,
    RemoteContentLayer,
};

/// Encodes `msg`, checks the exact bytes, and checks that decoding those
/// bytes yields `msg` again.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, bytes: &[u8]) {
    assert_eq!(msg.encode_to_vec(), bytes, "encoding of {msg:?}");
    assert_eq!(&M::decode(bytes).expect("decode"), msg, "decoding");
}

#[test]
fn image_spec_fields_1_5_7() {
    let spec = ImageSpec {
        base_ref: "a".into(),
        supervisor_ref: "b".into(),
        ide_layer_ref: vec!["c".into()],
        ..Default::default()
    };
    // 0x0a = field 1 LEN, 0x2a = field 5 LEN, 0x3a = field 7 LEN.
    assert_wire(
        &spec,
        &[0x0a, 0x01, b'a', 0x2a, 0x01, b'b', 0x3a, 0x01, b'c'],
    );
}

#[test]
fn image_spec_fields_2_and_3() {
    let spec = ImageSpec {
        ide_ref: "i".into(),
        content_layer: vec![ContentLayer { spec: None }],
        ..Default::default()
    };
    // 0x12 = field 2 LEN; 0x1a = field 3 LEN with an empty embedded message.
    assert_wire(&spec, &[0x12, 0x01, b'i', 0x1a, 0x00]);
}

#[test]
fn image_spec_ignores_reserved_desktop_fields() {
    // An older peer may still send field 4 (desktop_ide_ref, 0x22) and
    // field 6 (desktop_ide_plugin_ref, 0x32). They must be skipped.
    let bytes = [0x22, 0x01, b'd', 0x0a, 0x01, b'a', 0x32, 0x01, b'p'];
    let spec = ImageSpec::decode(&bytes[..]).unwrap();
    assert_eq!(
        spec,
        ImageSpec {
            base_ref: "a".into(),
            ..Default::default()
        }
    );
}

#[test]
fn content_layer_direct_is_field_2() {
    let layer = ContentLayer {
        spec: Some(content_layer::Spec::Direct(DirectContentLayer {
            content: vec![1, 2, 3],
        })),
    };
    // Outer: field 2 LEN (0x12), 5 bytes. Inner: field 1 LEN (0x0a), 3 bytes.
    assert_wire(&layer, &[0x12, 0x05, 0x0a, 0x03, 1, 2, 3]);
}

#[test]
fn content_layer_remote_is_field_1() {
    let layer = ContentLayer {
        spec: Some(content_layer::Spec::Remote(RemoteContentLayer {
            url: "u".into(),
            digest: "d".into(),
            diff_id: "f".into(),
            media_type: "m".into(),
            size: 300,
        })),
    };
    // Inner: url 0x0a, digest 0x12, diff_id 0x1a, media_type 0x22 (3 bytes
    // each), size = field 5 varint (0x28), 300 = 0xac 0x02. 15 bytes total.
    assert_wire(
        &layer,
        &[
            0x0a, 0x0f, 0x0a, 0x01, b'u', 0x12, 0x01, b'd', 0x1a, 0x01, b'f', 0x22, 0x01, b'm',
            0x28, 0xac, 0x02,
        ],
    );
}

#[test]
fn get_image_spec_response_spec_is_field_1() {
    let resp = GetImageSpecResponse {
        spec: Some(ImageSpec {
            base_ref: "a".into(),
            ..Default::default()
        }),
    };
    assert_wire(&resp, &[0x0a, 0x03, 0x0a, 0x01, b'a']);
}

#[test]
fn build_request_force_rebuild_is_field_3() {
    let req = BuildRequest {
        force_rebuild: true,
        ..Default::default()
    };
    // Field 3, varint: (3 << 3) | 0 = 0x18.
    assert_wire(&req, &[0x18, 0x01]);
}

#[test]
fn build_request_fields_4_to_7() {
    let req = BuildRequest {
        triggered_by: "t".into(),
        supervisor_ref: "s".into(),
        base_image_name_resolved: "b".into(),
        use_retry_client: true,
        ..Default::default()
    };
    assert_wire(
        &req,
        &[
            0x22, 0x01, b't', // field 4 LEN
            0x2a, 0x01, b's', // field 5 LEN
            0x32, 0x01, b'b', // field 6 LEN
            0x38, 0x01, // field 7 varint
        ],
    );
}

#[test]
fn resolve_base_image_request_fields() {
    let req = ResolveBaseImageRequest {
        r#ref: "r".into(),
        auth: Some(BuildRegistryAuth::default()),
        use_retry_client: true,
    };
    assert_wire(&req, &[0x0a, 0x01, b'r', 0x12, 0x00, 0x18, 0x01]);
}

#[test]
fn build_registry_auth_total_and_additional_map() {
    let mut auth = BuildRegistryAuth {
        mode: Some(build_registry_auth::Mode::Total(BuildRegistryAuthTotal {
            allow_all: true,
        })),
        ..Default::default()
    };
    auth.additional.insert("k".into(), "v".into());
    // total: field 1 LEN { field 1 varint 1 }.
    // additional: field 3 LEN map entry { key = field 1, value = field 2 }.
    assert_wire(
        &auth,
        &[
            0x0a, 0x02, 0x08, 0x01, 0x1a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v',
        ],
    );
}

#[test]
fn build_response_and_build_info_numbers() {
    let resp = BuildResponse {
        r#ref: "r".into(),
        status: BuildStatus::DoneSuccess as i32,
        message: "m".into(),
        base_ref: "b".into(),
        info: Some(BuildInfo {
            started_at: 1,
            build_id: "i".into(),
            ..Default::default()
        }),
    };
    assert_wire(
        &resp,
        &[
            0x0a, 0x01, b'r', // ref = 1
            0x10, 0x02, // status = 2, done_success = 2
            0x1a, 0x01, b'm', // message = 3
            0x22, 0x01, b'b', // base_ref = 4
            0x2a, 0x05, // info = 5
            0x18, 0x01, // info.started_at = 3
            0x2a, 0x01, b'i', // info.build_id = 5
        ],
    );
    assert_eq!(BuildStatus::DoneFailure.as_str_name(), "done_failure");
    assert_eq!(
        BuildStatus::from_str_name("running"),
        Some(BuildStatus::Running)
    );
}

#[test]
fn logs_request_build_id_is_field_3() {
    let req = LogsRequest {
        build_ref: "r".into(),
        censored: true,
        build_id: "i".into(),
    };
    assert_wire(&req, &[0x0a, 0x01, b'r', 0x10, 0x01, 0x1a, 0x01, b'i']);
}

#[test]
fn subassembly_status_fields() {
    let status = SubassemblyStatus {
        phase: SubassemblyPhase::Available as i32,
        url: "u".into(),
        manifest: vec![0xff],
        ..Default::default()
    };
    assert_wire(&status, &[0x08, 0x02, 0x22, 0x01, b'u', 0x2a, 0x01, 0xff]);
    assert_eq!(
        SubassemblyPhase::Unavailable.as_str_name(),
        "SUBASSEMBLY_PHASE_UNAVAILABLE"
    );
}

#[test]
fn workspace_initializer_git_is_field_2_and_clone_taget_is_field_4() {
    let init = WorkspaceInitializer {
        spec: Some(workspace_initializer::Spec::Git(GitInitializer {
            target_mode: CloneTargetMode::RemoteBranch as i32,
            clone_taget: "main".into(),
            ..Default::default()
        })),
    };
    // Outer: field 2 LEN (0x12), 8 bytes.
    // Inner: target_mode = field 3 varint (0x18) 2; clone_taget = field 4 LEN (0x22).
    let bytes = [0x12, 0x08, 0x18, 0x02, 0x22, 0x04, b'm', b'a', b'i', b'n'];
    assert_wire(&init, &bytes);

    let decoded = WorkspaceInitializer::decode(&bytes[..]).unwrap();
    let Some(workspace_initializer::Spec::Git(git)) = decoded.spec else {
        panic!("expected git initializer, got {decoded:?}");
    };
    assert_eq!(git.clone_taget, "main");
    assert_eq!(git.target_mode(), CloneTargetMode::RemoteBranch);
}

#[test]
fn git_initializer_remaining_fields() {
    let git = GitInitializer {
        remote_uri: "o".into(),
        upstream_remote_uri: "u".into(),
        checkout_location: "c".into(),
        full_clone: true,
        ..Default::default()
    };
    assert_wire(
        &git,
        &[
            0x0a, 0x01, b'o', // remote_uri = 1
            0x12, 0x01, b'u', // upstream_Remote_uri = 2
            0x2a, 0x01, b'c', // checkout_location = 5
            0x38, 0x01, // full_clone = 7
        ],
    );
}

#[test]
fn file_descriptor_set_describes_all_packages() {
    let fds = prost_types::FileDescriptorSet::decode(rf_api::FILE_DESCRIPTOR_SET).unwrap();
    let packages: Vec<&str> = fds.file.iter().map(|f| f.package()).collect();
    for pkg in ["registryfacade", "builder", "contentservice"] {
        assert!(
            packages.contains(&pkg),
            "missing package {pkg}: {packages:?}"
        );
    }

    let imagespec = fds
        .file
        .iter()
        .find(|f| f.name() == "registryfacade/imagespec.proto")
        .expect("imagespec.proto");
    let msg = imagespec
        .message_type
        .iter()
        .find(|m| m.name() == "ImageSpec")
        .expect("ImageSpec");
    let numbers: Vec<(&str, i32)> = msg.field.iter().map(|f| (f.name(), f.number())).collect();
    assert_eq!(
        numbers,
        [
            ("base_ref", 1),
            ("ide_ref", 2),
            ("content_layer", 3),
            ("supervisor_ref", 5),
            ("ide_layer_ref", 7)
        ]
    );
    let reserved: Vec<(i32, i32)> = msg
        .reserved_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    // Descriptor reserved ranges are half-open: [start, end).
    assert_eq!(reserved, [(4, 5), (6, 7)]);

    let provider = fds
        .file
        .iter()
        .find(|f| f.name() == "registryfacade/provider.proto")
        .expect("provider.proto");
    assert_eq!(provider.service[0].name(), "SpecProvider");
    assert_eq!(provider.service[0].method[0].name(), "GetImageSpec");
}
