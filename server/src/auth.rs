//! Bearer tokens: `[server] api_token` (or `PRISM_API_TOKEN`) for every route but health,
//! `admin_token` (or `PRISM_ADMIN_TOKEN`) for the routes that change what is served or
//! delete what others stored. Tokens are compared in constant time. With no token set,
//! every route is open (the server warns when it listens beyond loopback so).
//!
//! REST sends `Authorization: Bearer <token>`; gRPC sends the same as `authorization`
//! metadata. The admin token opens every route; the API token opens all but the admin
//! ones. Without an admin token the admin routes take the API token; with an admin token
//! alone only the admin routes are guarded.

use subtle::ConstantTimeEq;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Health checks: open to all, so probes need no secret.
    Open,
    Api,
    Admin,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this route needs a token: send `Authorization: Bearer <token>` (server.api_token)")]
    Missing,
    #[error("the token sent is not valid for this server")]
    Wrong,
    #[error("this route needs the admin token (server.admin_token); the token sent is the API token")]
    NotAdmin,
}

/// The server's tokens.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    api: Option<String>,
    admin: Option<String>,
}

impl Tokens {
    pub fn new(api: Option<String>, admin: Option<String>) -> Self {
        Tokens { api, admin }
    }

    /// Whether any route needs a token.
    pub fn any(&self) -> bool {
        self.api.is_some() || self.admin.is_some()
    }

    /// Checks `authorization` (the header's or metadata's value) against what `access`
    /// needs.
    pub fn check(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let needed = match access {
            Access::Open => false,
            // With an admin token alone, only the admin routes are guarded.
            Access::Api => self.api.is_some(),
            Access::Admin => self.any(),
        };
        if !needed {
            return Ok(());
        }
        let Some(sent) = authorization.and_then(bearer) else {
            return Err(Denied::Missing);
        };
        let is = |token: &Option<String>| token.as_ref().is_some_and(|t| bool::from(t.as_bytes().ct_eq(sent)));
        if is(&self.admin) {
            return Ok(());
        }
        match (access, is(&self.api)) {
            (Access::Admin, true) if self.admin.is_some() => Err(Denied::NotAdmin),
            (_, true) => Ok(()),
            (_, false) => Err(Denied::Wrong),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
}

/// What a REST route needs, by method (`"POST"`) and the route it matched (`None`: no
/// route, which answers 404 once a token is checked).
pub fn rest_access(method: &str, route: Option<&str>) -> Access {
    match (method, route) {
        // The page holds no data: what it shows comes from routes that take the token.
        (_, Some("/" | "/v2/health/live" | "/v2/health/ready")) => Access::Open,
        ("POST", Some("/v2/repository/models/{model}/load" | "/v2/repository/models/{model}/unload")) => Access::Admin,
        ("DELETE", Some("/v2/objects/{object_ref}")) => Access::Admin,
        _ => Access::Api,
    }
}

/// What a gRPC method needs, by its path (`/inference.GRPCInferenceService/ServerLive`).
pub fn grpc_access(path: &str) -> Access {
    match path.strip_prefix("/inference.GRPCInferenceService/") {
        Some("ServerLive" | "ServerReady") => Access::Open,
        Some("RepositoryModelLoad" | "RepositoryModelUnload") => Access::Admin,
        _ => Access::Api,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Tokens {
        Tokens::new(Some("api-secret".into()), Some("admin-secret".into()))
    }

    #[test]
    fn each_route_takes_the_tokens_it_needs() {
        let t = both();
        let api = Some(&b"Bearer api-secret"[..]);
        let admin = Some(&b"bearer admin-secret"[..]);
        assert_eq!(t.check(Access::Open, None), Ok(()));
        assert_eq!(t.check(Access::Api, None), Err(Denied::Missing));
        assert_eq!(t.check(Access::Api, Some(b"Basic YTpi")), Err(Denied::Missing));
        assert_eq!(t.check(Access::Api, Some(b"Bearer api-secreT")), Err(Denied::Wrong));
        assert_eq!(
            t.check(Access::Api, Some(b"Bearer api-secret-and-more")),
            Err(Denied::Wrong)
        );
        assert_eq!(t.check(Access::Api, api), Ok(()));
        assert_eq!(t.check(Access::Api, admin), Ok(()));
        assert_eq!(t.check(Access::Admin, api), Err(Denied::NotAdmin));
        assert_eq!(t.check(Access::Admin, admin), Ok(()));
        // No tokens: all open. An API token alone also opens the admin routes.
        assert_eq!(Tokens::default().check(Access::Admin, None), Ok(()));
        let api_only = Tokens::new(Some("api-secret".into()), None);
        assert_eq!(api_only.check(Access::Admin, api), Ok(()));
        assert_eq!(api_only.check(Access::Admin, None), Err(Denied::Missing));
        // An admin token alone guards the admin routes only.
        let admin_only = Tokens::new(None, Some("admin-secret".into()));
        assert_eq!(admin_only.check(Access::Api, None), Ok(()));
        assert_eq!(admin_only.check(Access::Admin, None), Err(Denied::Missing));
        assert_eq!(
            admin_only.check(Access::Admin, Some(b"Bearer api-secret")),
            Err(Denied::Wrong)
        );
    }

    #[test]
    fn routes_are_classified_by_what_they_change() {
        let rest = |m: &str, r: &str| rest_access(m, Some(r));
        assert_eq!(rest("GET", "/v2/health/ready"), Access::Open);
        assert_eq!(rest("GET", "/v2/status"), Access::Api);
        assert_eq!(rest("GET", "/metrics"), Access::Api);
        assert_eq!(rest("POST", "/v2/models/{model}/infer"), Access::Api);
        assert_eq!(rest("POST", "/v2/repository/models/{model}/load"), Access::Admin);
        assert_eq!(rest("POST", "/v2/repository/models/{model}/unload"), Access::Admin);
        assert_eq!(rest("POST", "/v2/repository/index"), Access::Api);
        assert_eq!(rest("DELETE", "/v2/objects/{object_ref}"), Access::Admin);
        assert_eq!(rest("GET", "/v2/objects/{object_ref}"), Access::Api);
        assert_eq!(rest_access("GET", None), Access::Api);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/ServerLive"), Access::Open);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/ModelInfer"), Access::Api);
        assert_eq!(grpc_access("/other.Service/ServerLive"), Access::Api);
        assert_eq!(
            grpc_access("/inference.GRPCInferenceService/RepositoryModelUnload"),
            Access::Admin
        );
    }
}
