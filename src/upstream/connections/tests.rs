//! Connections against a raw TCP upstream on 127.0.0.1 that counts the
//! connections it accepts and answers each request as a test script says.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::body::{empty, full};

/// How the fake upstream answers each request on a connection.
#[derive(Clone, Copy)]
enum Answer {
    /// `200 ok`, and the connection stays open.
    KeepAlive,
    /// `200 ok`, then the upstream closes the connection.
    ThenClose,
    /// A body far larger than one read, so a client can stop half-way.
    Large,
}

const LARGE_BODY: usize = 1 << 20;

struct FakeUpstream {
    origin: Uri,
    accepted: Arc<AtomicUsize>,
}

async fn fake_upstream(answer: Answer) -> FakeUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin: Uri = format!("http://{}", listener.local_addr().expect("addr"))
        .parse()
        .expect("uri");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(read) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..read]);
                    // Requests here have no body: one answer per header block.
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = match answer {
                            Answer::Large => vec![b'x'; LARGE_BODY],
                            _ => b"ok".to_vec(),
                        };
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if socket.write_all(head.as_bytes()).await.is_err()
                            || socket.write_all(&body).await.is_err()
                        {
                            return;
                        }
                        if matches!(answer, Answer::ThenClose) {
                            return;
                        }
                    }
                }
            });
        }
    });
    FakeUpstream { origin, accepted }
}

fn connections(max_idle: usize, idle_timeout: Duration) -> Arc<Connections> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(None).expect("tls"))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Arc::new(Connections::new(connector, max_idle, idle_timeout))
}

fn get(origin: &Uri) -> Request<ProxyBody> {
    Request::get(format!("{origin}activities"))
        .body(empty())
        .expect("request")
}

async fn body_text(response: Response<UpstreamBody>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn requests_one_after_another_share_one_connection() {
    let upstream = fake_upstream(Answer::KeepAlive).await;
    let pool = connections(4, MINUTE);
    for _ in 0..5 {
        let response = pool.send(get(&upstream.origin)).await.expect("send");
        assert_eq!(body_text(response).await, "ok");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let upstream = fake_upstream(Answer::ThenClose).await;
    let pool = connections(4, MINUTE);
    for _ in 0..3 {
        let response = pool.send(get(&upstream.origin)).await.expect("send");
        assert_eq!(body_text(response).await, "ok");
        // Let the upstream's close reach our socket before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let upstream = fake_upstream(Answer::Large).await;
    let pool = connections(4, MINUTE);
    let response = pool.send(get(&upstream.origin)).await.expect("send");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.into_data().is_ok_and(|data| data.len() < LARGE_BODY));
    drop(body);
    assert_eq!(pool.idle_count(), 0);
    let response = pool.send(get(&upstream.origin)).await.expect("send");
    assert_eq!(body_text(response).await.len(), LARGE_BODY);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_more_connections_are_kept_idle_than_allowed() {
    let upstream = fake_upstream(Answer::KeepAlive).await;
    let pool = connections(2, MINUTE);
    let mut responses = Vec::new();
    for _ in 0..5 {
        responses.push(pool.send(get(&upstream.origin)).await.expect("send"));
    }
    for response in responses {
        assert_eq!(body_text(response).await, "ok");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 5);
    assert_eq!(pool.idle_count(), 2);
}

#[tokio::test]
async fn a_connection_idle_past_the_timeout_is_not_reused() {
    let upstream = fake_upstream(Answer::KeepAlive).await;
    let pool = connections(4, Duration::ZERO);
    for _ in 0..3 {
        let response = pool.send(get(&upstream.origin)).await.expect("send");
        assert_eq!(body_text(response).await, "ok");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_body_is_sent_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin: Uri = format!("http://{}", listener.local_addr().expect("addr"))
        .parse()
        .expect("uri");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut seen = Vec::new();
        let mut buffer = vec![0; 4096];
        while !seen.ends_with(b"hello") {
            let read = socket.read(&mut buffer).await.expect("read");
            assert!(read > 0, "closed before the body: {seen:?}");
            seen.extend_from_slice(&buffer[..read]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("write");
        // The socket goes back with the request, so the connection stays open.
        (String::from_utf8_lossy(&seen).into_owned(), socket)
    });
    let pool = connections(4, MINUTE);
    let request = Request::post(format!("{origin}activities"))
        .header(http::header::CONTENT_LENGTH, "5")
        .body(full("hello"))
        .expect("request");
    let response = pool.send(request).await.expect("send");
    assert_eq!(response.status(), http::StatusCode::OK);
    let (seen, _socket) = server.await.expect("server");
    assert!(seen.starts_with("POST /activities HTTP/1.1\r\n"), "{seen}");
    let host = format!("host: {}\r\n", origin.authority().expect("authority"));
    assert!(seen.contains(&host), "{seen}");
    // An empty body is at its end at once: the connection is back already.
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin: Uri = format!("http://{}", listener.local_addr().expect("addr"))
        .parse()
        .expect("uri");
    drop(listener);
    let pool = connections(4, MINUTE);
    let error = pool.send(get(&origin)).await.err().expect("an error");
    assert!(matches!(error, SendError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn a_connection_serves_only_its_own_origin() {
    let first = fake_upstream(Answer::KeepAlive).await;
    let second = fake_upstream(Answer::KeepAlive).await;
    let pool = connections(4, MINUTE);
    for upstream in [&first, &second, &first, &second] {
        let response = pool.send(get(&upstream.origin)).await.expect("send");
        assert_eq!(body_text(response).await, "ok");
    }
    assert_eq!(first.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(second.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(), 2);
}
