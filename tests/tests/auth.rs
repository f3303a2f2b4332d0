//! Bearer tokens over REST and gRPC: health is open, every other route needs the API
//! token, load, unload and delete need the admin token; refusals say why, with
//! `WWW-Authenticate` (REST) or UNAUTHENTICATED / PERMISSION_DENIED (gRPC).

use prism_client::Client;
use prism_protocol::grpc::{
    GrpcInferenceServiceClient, RepositoryModelUnloadRequest, ServerLiveRequest, ServerMetadataRequest,
};
use prism_tests::{TestServer, celsius, config, one_row};
use tonic::Code;

const API: &str = "api-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\napi_token = \"{API}\"\nadmin_token = \"{ADMIN}\"\n{}",
        celsius("celsius", "")
    );
    (TestServer::start(config(&text, dir.path())).await, dir)
}

/// `method path` with `token`; the status, `WWW-Authenticate` and the body.
async fn call(s: &TestServer, method: reqwest::Method, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut r = reqwest::Client::new().request(method, format!("{}{path}", s.url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if path.ends_with("/infer") {
        r = r.body(r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[100]}]}"#);
    }
    let r = r.send().await.unwrap();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), challenge, r.text().await.unwrap())
}

#[tokio::test]
async fn rest_routes_need_the_token_their_route_needs() {
    let (s, _dir) = start().await;
    use reqwest::Method;
    // Health is open to probes.
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(call(&s, Method::GET, path, None).await.0, 200, "{path}");
    }
    // Everything else needs a token: 401 with the challenge and a JSON reason.
    for path in ["/v2", "/v2/models/celsius", "/metrics", "/v2/status", "/v2/nowhere"] {
        let (status, challenge, body) = call(&s, Method::GET, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(challenge, r#"Bearer realm="prism""#, "{path}");
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(e["error"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
    }
    let (status, challenge, _) = call(&s, Method::POST, "/v2/models/celsius/infer", Some("wrong-token-000000")).await;
    assert_eq!(
        (status, challenge.as_str()),
        (401, r#"Bearer realm="prism", error="invalid_token""#)
    );
    // The API token opens inference, the admin token too; unknown routes are 404 once
    // the token is good.
    for token in [API, ADMIN] {
        let (status, _, body) = call(&s, Method::POST, "/v2/models/celsius/infer", Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(call(&s, Method::GET, "/v2/nowhere", Some(token)).await.0, 404);
    }
    // Unload and delete need the admin token: 403 for the API token.
    let (status, challenge, body) = call(&s, Method::POST, "/v2/repository/models/celsius/unload", Some(API)).await;
    assert_eq!((status, challenge.as_str()), (403, ""), "{body}");
    assert!(body.contains("admin token"), "{body}");
    let object = format!("/v2/objects/{}", "ab".repeat(16));
    assert_eq!(call(&s, Method::DELETE, &object, Some(API)).await.0, 403);
    assert_eq!(
        call(&s, Method::DELETE, &object, Some(ADMIN)).await.0,
        404,
        "admitted, and unknown"
    );
    assert_eq!(
        call(&s, Method::GET, &object, Some(API)).await.0,
        404,
        "reading by ref is an API route"
    );

    // The client library sends its token with every call.
    let c = Client::new(&s.url).with_token(API).unwrap();
    assert_eq!(c.infer("celsius", &one_row(0.0)).await.unwrap().outputs.len(), 1);
    let e = Client::new(&s.url).infer("celsius", &one_row(0.0)).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    let admin = Client::new(&s.url).with_token(ADMIN).unwrap();
    assert_eq!(
        call(&s, Method::POST, "/v2/repository/models/celsius/unload", Some(ADMIN))
            .await
            .0,
        200
    );
    assert!(!admin.model_ready("celsius").await.unwrap());
    s.stop().await.unwrap();
}

/// `msg` with `token` as `authorization` metadata.
fn with<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn grpc_calls_carry_the_token_as_metadata() {
    let (s, _dir) = start().await;
    let mut g = GrpcInferenceServiceClient::connect(s.grpc_url.clone()).await.unwrap();
    assert!(g.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    let e = g.server_metadata(ServerMetadataRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("needs a token"), "{e}");
    let meta = g.server_metadata(with(API, ServerMetadataRequest {})).await.unwrap();
    assert_eq!(meta.into_inner().name, "prism");
    let unload = RepositoryModelUnloadRequest {
        model_name: "celsius".into(),
        ..Default::default()
    };
    let e = g.repository_model_unload(with(API, unload.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    g.repository_model_unload(with(ADMIN, unload)).await.unwrap();
    s.stop().await.unwrap();
}

#[test]
fn a_short_or_spaced_token_is_refused_at_start_up() {
    for (token, want) in [
        ("short", "at least 16 characters"),
        ("has a space in it!!", "without spaces"),
    ] {
        let text = format!("[server]\napi_token = \"{token}\"\n{}", celsius("celsius", ""));
        let e = prism_config::Config::parse(&text, "t.toml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_token") && e.contains(want), "{e}");
    }
}
