//! A REAL tonic server for in-process services under test.

/// Serves `routes` (e.g. `Routes::new(MyServer::new(svc))`) on 127.0.0.1 with an ephemeral
/// port in a task of the current runtime; returns `http://127.0.0.1:PORT` for clients.
pub async fn serve_grpc(routes: tonic::service::Routes) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}
