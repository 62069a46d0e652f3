//! In-process gRPC round trips over a loopback TCP socket (127.0.0.1 only).

use std::net::SocketAddr;

use rf_api::builder::image_builder_client::ImageBuilderClient;
use rf_api::builder::image_builder_server::{ImageBuilder, ImageBuilderServer};
use rf_api::builder::{
    BuildRequest, BuildResponse, BuildStatus, ListBuildsRequest, ListBuildsResponse, LogsRequest,
    LogsResponse, ResolveBaseImageRequest, ResolveBaseImageResponse, ResolveWorkspaceImageRequest,
    ResolveWorkspaceImageResponse,
};
use rf_api::registryfacade::spec_provider_client::SpecProviderClient;
use rf_api::registryfacade::spec_provider_server::{SpecProvider, SpecProviderServer};
use rf_api::registryfacade::{
    content_layer, ContentLayer, DirectContentLayer, GetImageSpecRequest, GetImageSpecResponse,
    ImageSpec,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Binds an ephemeral loopback port and serves `router` on it in the background.
async fn serve(router: tonic::transport::server::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

struct FixedSpecs;

#[tonic::async_trait]
impl SpecProvider for FixedSpecs {
    async fn get_image_spec(
        &self,
        request: Request<GetImageSpecRequest>,
    ) -> Result<Response<GetImageSpecResponse>, Status> {
        let id = request.into_inner().id;
        if id != "ws-1" {
            return Err(Status::not_found(format!("no spec for {id}")));
        }
        Ok(Response::new(GetImageSpecResponse {
            spec: Some(ImageSpec {
                base_ref: "docker.io/library/alpine:3".into(),
                supervisor_ref: "example.com/supervisor:1".into(),
                ide_layer_ref: vec!["example.com/ide:1".into()],
                content_layer: vec![ContentLayer {
                    spec: Some(content_layer::Spec::Direct(DirectContentLayer {
                        content: b"tar".to_vec(),
                    })),
                }],
                ..Default::default()
            }),
        }))
    }
}

#[tokio::test]
async fn spec_provider_round_trip() {
    let addr = serve(Server::builder().add_service(SpecProviderServer::new(FixedSpecs))).await;

    let mut client = SpecProviderClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let spec = client
        .get_image_spec(GetImageSpecRequest { id: "ws-1".into() })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(spec.base_ref, "docker.io/library/alpine:3");
    assert_eq!(spec.supervisor_ref, "example.com/supervisor:1");
    assert_eq!(spec.ide_layer_ref, ["example.com/ide:1"]);
    assert_eq!(
        spec.content_layer[0].spec,
        Some(content_layer::Spec::Direct(DirectContentLayer {
            content: b"tar".to_vec()
        }))
    );

    let err = client
        .get_image_spec(GetImageSpecRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

struct EchoBuilder;

type ItemStream<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

#[tonic::async_trait]
impl ImageBuilder for EchoBuilder {
    async fn resolve_base_image(
        &self,
        request: Request<ResolveBaseImageRequest>,
    ) -> Result<Response<ResolveBaseImageResponse>, Status> {
        Ok(Response::new(ResolveBaseImageResponse {
            r#ref: format!("{}@sha256:0", request.into_inner().r#ref),
        }))
    }

    async fn resolve_workspace_image(
        &self,
        _request: Request<ResolveWorkspaceImageRequest>,
    ) -> Result<Response<ResolveWorkspaceImageResponse>, Status> {
        Err(Status::unimplemented("resolve_workspace_image"))
    }

    type BuildStream = ItemStream<BuildResponse>;

    async fn build(
        &self,
        request: Request<BuildRequest>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let req = request.into_inner();
        let status = |s: BuildStatus| BuildResponse {
            r#ref: req.supervisor_ref.clone(),
            status: s as i32,
            ..Default::default()
        };
        Ok(Response::new(tokio_stream::iter(vec![
            Ok(status(BuildStatus::Running)),
            Ok(status(BuildStatus::DoneSuccess)),
        ])))
    }

    type LogsStream = ItemStream<LogsResponse>;

    async fn logs(
        &self,
        _request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        Err(Status::unimplemented("logs"))
    }

    async fn list_builds(
        &self,
        _request: Request<ListBuildsRequest>,
    ) -> Result<Response<ListBuildsResponse>, Status> {
        Ok(Response::new(ListBuildsResponse::default()))
    }
}

#[tokio::test]
async fn image_builder_unary_and_streaming_round_trip() {
    let addr = serve(Server::builder().add_service(ImageBuilderServer::new(EchoBuilder))).await;
    let mut client = ImageBuilderClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let resolved = client
        .resolve_base_image(ResolveBaseImageRequest {
            r#ref: "alpine:3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.r#ref, "alpine:3@sha256:0");

    let mut stream = client
        .build(BuildRequest {
            supervisor_ref: "sup".into(),
            force_rebuild: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.unwrap();
        assert_eq!(item.r#ref, "sup");
        statuses.push(item.status());
    }
    assert_eq!(statuses, [BuildStatus::Running, BuildStatus::DoneSuccess]);

    let err = client.logs(LogsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}
