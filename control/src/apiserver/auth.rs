//! Bearer-token authentication and the admin kubeconfig.
//!
//! Two tokens are generated on first start and kept in the data directory:
//! the admin token (`admin-token`, embedded in `kubeconfig`) and the node
//! join token (`node-token`), which node agents present. Requests without a
//! known token get `401 Unauthorized`, except the health endpoints.

use std::path::Path;
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ServerError, State};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// The cluster administrator.
    Admin,
    /// A node agent (joined with the node token).
    Node,
}

/// The tokens the server accepts.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    node: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

/// 244 bits from the OS's random source, as 64 hex digits.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn load_or_write(path: &Path) -> Result<String, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_string()),
        Ok(_) => {
            let token = random_token();
            super::pki::write_private(path, &format!("{token}\n"))?;
            Ok(token)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let token = random_token();
            super::pki::write_private(path, &format!("{token}\n"))?;
            Ok(token)
        }
        Err(source) => Err(ServerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Tokens {
    /// Reads `admin-token` and `node-token` from `dir`, creating them on
    /// first start.
    pub fn load_or_create(dir: &Path) -> Result<Tokens, ServerError> {
        Ok(Tokens {
            admin: load_or_write(&dir.join("admin-token"))?,
            node: load_or_write(&dir.join("node-token"))?,
        })
    }

    /// The admin token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// Who presents `token`, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        // Compare in constant time: a token is a password.
        let eq = |a: &str, b: &str| {
            a.len() == b.len()
                && a.bytes()
                    .zip(b.bytes())
                    .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                    == 0
        };
        if eq(token, &self.admin) {
            Some(User::Admin)
        } else if eq(token, &self.node) {
            Some(User::Node)
        } else {
            None
        }
    }
}

/// Middleware: rejects requests without a valid bearer token (health
/// checks and `/version` excepted, as Kubernetes allows them anonymously).
pub(super) async fn authenticate(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(
        path,
        "/healthz" | "/readyz" | "/livez" | "/version" | "/version/"
    ) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| state.tokens.authenticate(t)) {
        Some(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The admin kubeconfig: the server, the CA, the admin token.
pub(super) fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: skiff-admin
  user:
    token: {token}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: skiff-admin
    namespace: default
current-context: skiff
"
    )
}
