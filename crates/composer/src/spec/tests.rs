//! Remote and caching providers against a real tonic SpecProvider server on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rf_api::registryfacade::spec_provider_server::{
    SpecProvider as SpecProviderService, SpecProviderServer,
};
use rf_api::registryfacade::{GetImageSpecRequest, GetImageSpecResponse, ImageSpec};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::*;

/// Knows "ws1" (and "nospec", which it answers without a spec); counts calls.
#[derive(Clone, Default)]
struct TestService {
    calls: Arc<AtomicUsize>,
    /// When set, every call is announced on `arrived` and answered only once a permit is
    /// added to the gate.
    gate: Option<Gate>,
}

#[derive(Clone)]
struct Gate {
    arrived: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Semaphore>,
}

#[tonic::async_trait]
impl SpecProviderService for TestService {
    async fn get_image_spec(
        &self,
        request: Request<GetImageSpecRequest>,
    ) -> Result<Response<GetImageSpecResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.arrived.notify_one();
            gate.open.acquire().await.unwrap().forget();
        }
        match request.into_inner().id.as_str() {
            "ws1" => Ok(Response::new(GetImageSpecResponse {
                spec: Some(ws1_spec()),
            })),
            "nospec" => Ok(Response::new(GetImageSpecResponse { spec: None })),
            "broken" => Err(Status::internal("kaputt")),
            id => Err(Status::not_found(format!("unknown workspace {id}"))),
        }
    }
}

fn ws1_spec() -> ImageSpec {
    ImageSpec {
        base_ref: "docker.io/library/alpine:3".into(),
        ide_ref: "example.com/ide:1".into(),
        ..Default::default()
    }
}

async fn serve(service: TestService) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .add_service(SpecProviderServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn addr(a: impl ToString) -> RemoteAddr {
    RemoteAddr {
        addr: a.to_string(),
        tls: None,
    }
}

fn remote(addrs: Vec<RemoteAddr>) -> RemoteSpecProvider {
    RemoteSpecProvider::new(addrs, Duration::from_secs(2), Duration::from_secs(5)).unwrap()
}

/// A hang guard: lookups must come back, whatever they return.
async fn guarded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("spec lookup hung")
}

#[tokio::test]
async fn remote_found_not_found_and_invalid() {
    let server = serve(TestService::default()).await;
    for form in [
        server.to_string(),
        format!("dns:///{server}"),
        format!("http://{server}"),
    ] {
        let p = remote(vec![addr(&form)]);
        assert_eq!(
            guarded(p.get_spec("ws1")).await.unwrap(),
            ws1_spec(),
            "{form}"
        );
        match guarded(p.get_spec("ws2")).await {
            Err(SpecError::NotFound(m)) => assert!(m.contains("unknown workspace ws2"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            guarded(p.get_spec("nospec")).await,
            Err(SpecError::Invalid(_))
        ));
        match guarded(p.get_spec("broken")).await {
            Err(SpecError::Unavailable(m)) => assert!(m.contains("kaputt"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn remote_falls_through_to_the_next_address() {
    let server = serve(TestService::default()).await;
    let p = remote(vec![addr(closed_port().await), addr(server)]);
    assert_eq!(guarded(p.get_spec("ws1")).await.unwrap(), ws1_spec());
    // NotFound from the second beats Unavailable from the first.
    assert!(matches!(
        guarded(p.get_spec("ws2")).await,
        Err(SpecError::NotFound(_))
    ));
    // The order does not matter for which error wins.
    let p = remote(vec![addr(server), addr(closed_port().await)]);
    assert!(matches!(
        guarded(p.get_spec("ws2")).await,
        Err(SpecError::NotFound(_))
    ));
}

#[tokio::test]
async fn remote_all_down_is_unavailable() {
    let p = remote(vec![addr(closed_port().await), addr(closed_port().await)]);
    match guarded(p.get_spec("ws1")).await {
        Err(SpecError::Unavailable(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn remote_silent_peer_times_out() {
    // Accepts TCP connections but never speaks HTTP/2: only the timeouts end the lookup.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let p = RemoteSpecProvider::new(
        vec![addr(silent)],
        Duration::from_millis(200),
        Duration::from_millis(300),
    )
    .unwrap();
    assert!(matches!(
        guarded(p.get_spec("ws1")).await,
        Err(SpecError::Unavailable(_))
    ));
}

#[tokio::test]
async fn caching_within_ttl_calls_once() {
    let service = TestService::default();
    let calls = service.calls.clone();
    let server = serve(service).await;
    let p = CachingSpecProvider::new(remote(vec![addr(server)]), 16, Duration::from_secs(60));
    assert_eq!(guarded(p.get_spec("ws1")).await.unwrap(), ws1_spec());
    assert_eq!(guarded(p.get_spec("ws1")).await.unwrap(), ws1_spec());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    p.invalidate("ws1").await;
    assert_eq!(guarded(p.get_spec("ws1")).await.unwrap(), ws1_spec());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn caching_expires_after_ttl() {
    let service = TestService::default();
    let calls = service.calls.clone();
    let server = serve(service).await;
    let p = CachingSpecProvider::new(remote(vec![addr(server)]), 16, Duration::from_millis(100));
    guarded(p.get_spec("ws1")).await.unwrap();
    guarded(p.get_spec("ws1")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Past the TTL on tokio's clock; real time runs again for the gRPC call.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(101)).await;
    tokio::time::resume();
    guarded(p.get_spec("ws1")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn caching_coalesces_concurrent_lookups() {
    let gate = Gate {
        arrived: Arc::new(tokio::sync::Notify::new()),
        open: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let service = TestService {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let calls = service.calls.clone();
    let server = serve(service).await;
    let p = Arc::new(CachingSpecProvider::new(
        remote(vec![addr(server)]),
        16,
        Duration::from_secs(60),
    ));
    let entered = Arc::new(AtomicUsize::new(0));
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let p = p.clone();
            let entered = entered.clone();
            tokio::spawn(async move {
                entered.fetch_add(1, Ordering::SeqCst);
                p.get_spec("ws1").await
            })
        })
        .collect();
    // The provider holds the first call until every lookup has started waiting on it.
    guarded(gate.arrived.notified()).await;
    guarded(async {
        while entered.load(Ordering::SeqCst) < 8 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate.open.add_permits(8);
    for l in guarded(futures::future::join_all(lookups)).await {
        assert_eq!(l.unwrap().unwrap(), ws1_spec());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn caching_does_not_cache_errors() {
    let service = TestService::default();
    let calls = service.calls.clone();
    let server = serve(service).await;
    let p = CachingSpecProvider::new(remote(vec![addr(server)]), 16, Duration::from_secs(60));
    assert!(matches!(
        guarded(p.get_spec("missing")).await,
        Err(SpecError::NotFound(_))
    ));
    assert!(matches!(
        guarded(p.get_spec("missing")).await,
        Err(SpecError::NotFound(_))
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn works_through_trait_objects() {
    let fixed = FixedSpecProvider::from_json(br#"{"a": {"baseRef": "alpine"}}"#).unwrap();
    let boxed: Box<dyn SpecProvider> = Box::new(fixed);
    let shared: Arc<dyn SpecProvider> =
        Arc::new(CachingSpecProvider::new(boxed, 4, Duration::from_secs(1)));
    assert_eq!(shared.get_spec("a").await.unwrap().base_ref, "alpine");
}
