//! Bearer-token authentication and the admin kubeconfig.
//!
//! Two tokens are generated on first start and kept in the data directory:
//! the admin token (`admin-token`, embedded in `kubeconfig`) and the node
//! join token (`node-token`), which node agents present. ServiceAccount
//! tokens (`serviceaccounts/NAME/token`, as `kubectl create token` asks)
//! are signed with a key kept in `sa-signing-key`: `skiff-sa.PAYLOAD.MAC`,
//! where PAYLOAD names the account (namespace, name, uid) and the expiry,
//! and MAC is its HMAC-SHA256. A token is valid until it expires and while
//! the account it names (same uid) exists. Requests without a valid token
//! get `401 Unauthorized`, except the health endpoints.

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
    /// A ServiceAccount, by its token.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// What a ServiceAccount token says, once its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountClaims {
    /// Namespace of the account.
    pub ns: String,
    /// Name of the account.
    pub name: String,
    /// uid of the account when the token was issued.
    pub uid: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
}

const SA_PREFIX: &str = "skiff-sa.";

/// The tokens the server accepts.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    node: String,
    signing_key: String,
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
            signing_key: load_or_write(&dir.join("sa-signing-key"))?,
        })
    }

    fn mac(&self, payload: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.signing_key.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(payload.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Issues a token for a ServiceAccount.
    pub fn issue(&self, claims: &AccountClaims) -> String {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(claims).expect("claims serialize"));
        format!("{SA_PREFIX}{payload}.{}", self.mac(&payload))
    }

    /// The claims of a ServiceAccount token whose signature is valid and
    /// which has not expired at `now` (seconds since the epoch). Whether the
    /// account still exists is the caller's check.
    pub fn verify(&self, token: &str, now: i64) -> Option<AccountClaims> {
        use base64::Engine;
        let (payload, mac) = token.strip_prefix(SA_PREFIX)?.split_once('.')?;
        if !constant_time_eq(&self.mac(payload), mac) {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let claims: AccountClaims = serde_json::from_slice(&bytes).ok()?;
        (claims.exp > now).then_some(claims)
    }

    /// The admin token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The node join token (also what the API server presents to node
    /// agents when it proxies `pods/log`).
    pub fn node(&self) -> &str {
        &self.node
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

/// Compares in constant time: a token is a password.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who presents `token`: the admin, a node, or a ServiceAccount that still
/// exists with the uid the token was issued for.
async fn user_of(state: &State, token: &str) -> Option<User> {
    if let Some(user) = state.tokens.authenticate(token) {
        return Some(user);
    }
    let claims = state
        .tokens
        .verify(token, jiff::Timestamp::now().as_second())?;
    let rt = skiff_api::resources::by_kind("v1", "ServiceAccount")?;
    let kv = state
        .store
        .get(&rt.key(Some(&claims.ns), &claims.name))
        .await
        .ok()??;
    let account: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
    (account.pointer("/metadata/uid").and_then(|u| u.as_str()) == Some(claims.uid.as_str()))
        .then_some(User::ServiceAccount {
            namespace: claims.ns,
            name: claims.name,
        })
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
    let user = match token {
        Some(token) => user_of(&state, token).await,
        None => None,
    };
    match user {
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
