//! Property tests of the ranged blob response: any `Range`, `If-Range` and `If-None-Match`
//! over a blob of any size gives 200, 206, 304 or 416, never a panic, and the bytes served are
//! exactly the slice the status and `Content-Range` announce.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use rf_serve::{blob_response, BlobMeta};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "bytes=[0-9]{0,4}-[0-9]{0,4}",
        "bytes= ?-?[0-9]{0,25}-?[0-9]{0,25}",
        "bytes=[0-9]{1,3}-[0-9]{1,3}, ?[0-9]{1,3}-[0-9]{0,3}",
        "(W/)?\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"",
        "\\*|\"x\"|W/\"x\", \"y\"",
        "[ -~]{0,40}",
    ]
}

fn run(
    method: Method,
    size: usize,
    headers: Vec<(&'static str, String)>,
) -> Result<(), TestCaseError> {
    let blob: Bytes = (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mut h = HeaderMap::new();
    for (k, v) in &headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(*k, v);
        }
    }
    let meta = BlobMeta {
        digest: DIGEST,
        size: size as u64,
        media_type: "application/octet-stream",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (status, resp_headers, body) = rt.block_on(async {
        let source = blob.clone();
        let resp = blob_response(&method, &h, &meta, |range| async move {
            let part = source.slice(range.start as usize..range.end as usize);
            Ok::<_, std::io::Error>(futures::stream::iter([Ok(part)]))
        })
        .await
        .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    });
    let is_head = method == Method::HEAD;
    match status {
        StatusCode::OK => {
            prop_assert_eq!(if is_head { Bytes::new() } else { blob.clone() }, body);
        }
        StatusCode::PARTIAL_CONTENT => {
            let cr = resp_headers["content-range"].to_str().unwrap();
            let (range, total) = cr.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
            prop_assert_eq!(total.parse::<usize>().unwrap(), size);
            let (a, b) = range.split_once('-').unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            prop_assert!(a <= b && b < size, "{cr}");
            if !is_head {
                prop_assert_eq!(&body[..], &blob[a..=b]);
            }
        }
        StatusCode::NOT_MODIFIED | StatusCode::RANGE_NOT_SATISFIABLE => {
            prop_assert!(body.is_empty() || status == StatusCode::RANGE_NOT_SATISFIABLE);
        }
        other => prop_assert!(false, "status {other} for {headers:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_conditional_and_range_headers(
        head in any::<bool>(),
        size in prop_oneof![Just(0usize), Just(1usize), 0usize..300],
        range in prop::option::of(header_value()),
        if_range in prop::option::of(header_value()),
        if_none_match in prop::option::of(header_value()),
    ) {
        let mut headers = Vec::new();
        if let Some(v) = range { headers.push(("range", v)); }
        if let Some(v) = if_range { headers.push(("if-range", v)); }
        if let Some(v) = if_none_match { headers.push(("if-none-match", v)); }
        run(if head { Method::HEAD } else { Method::GET }, size, headers)?;
    }
}
