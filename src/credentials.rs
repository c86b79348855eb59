//! API key and secret, and the providers that supply them at each token fetch.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::SecretString;

use crate::{BoxFuture, Error};

/// Preferred names of the environment variables holding the credentials.
pub(crate) const ENV_API_KEY: &str = "OZZOBIT_API_KEY";
pub(crate) const ENV_API_SECRET: &str = "OZZOBIT_API_SECRET";
/// The spelling in OZZOBiT's own guide, accepted when the preferred name is unset.
const ENV_API_KEY_VENDOR: &str = "OZZOBiT_API_KEY";
const ENV_API_SECRET_VENDOR: &str = "OZZOBiT_API_SECRET";

/// An OZZOBiT API key (public) and API secret.
///
/// The secret is held in a [`SecretString`]: it is zeroized on drop and `Debug` shows
/// `[REDACTED]` in its place.
///
/// ```
/// use ozzobit_auth::Credentials;
///
/// let creds = Credentials::new("pk_live_123", "sk_live_456");
/// assert_eq!(creds.api_key(), "pk_live_123");
/// assert!(!format!("{creds:?}").contains("sk_live_456"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    api_key: String,
    api_secret: SecretString,
}

impl Credentials {
    /// Credentials from an API key and an API secret.
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: SecretString::from(api_secret.into()),
        }
    }

    /// Reads `OZZOBIT_API_KEY` and `OZZOBIT_API_SECRET` once, now.
    ///
    /// The vendor guide's spelling, `OZZOBiT_API_KEY` / `OZZOBiT_API_SECRET`, is read when the
    /// upper-case name is unset. To re-read the variables at every token fetch (so a rotated
    /// secret is picked up), use [`EnvCredentials`] instead.
    ///
    /// # Errors
    ///
    /// A credentials error naming the variable when it is missing, empty or not UTF-8.
    pub fn from_env() -> Result<Self, Error> {
        Ok(Self::new(
            read_env(ENV_API_KEY, ENV_API_KEY_VENDOR)?,
            read_env(ENV_API_SECRET, ENV_API_SECRET_VENDOR)?,
        ))
    }

    /// The public API key.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The API secret. Expose it only to send it to the token endpoint.
    pub fn api_secret(&self) -> &SecretString {
        &self.api_secret
    }

    /// Whether `text` contains this secret, so that text can be redacted before it is shown.
    #[cfg(feature = "reqwest")]
    pub(crate) fn secret_in(&self, text: &str) -> bool {
        let secret = secrecy::ExposeSecret::expose_secret(&self.api_secret);
        !secret.is_empty() && text.contains(secret)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &self.api_key)
            .field("api_secret", &"[REDACTED]")
            .finish()
    }
}

/// Reads `primary` from the process environment, falling back to `fallback` only when `primary`
/// is unset.
pub(crate) fn read_env(primary: &str, fallback: &str) -> Result<String, Error> {
    read_var(|name| std::env::var_os(name), primary, fallback)
}

/// [`read_env`] over any lookup, so tests need not mutate the process environment.
fn read_var(
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    primary: &str,
    fallback: &str,
) -> Result<String, Error> {
    let (name, value) = match lookup(primary) {
        Some(v) => (primary, v),
        None => match lookup(fallback) {
            Some(v) => (fallback, v),
            None => {
                return Err(Error::credentials(format!(
                    "environment variable {primary} is not set"
                )));
            }
        },
    };
    let value = value
        .into_string()
        .map_err(|_| Error::credentials(format!("environment variable {name} is not UTF-8")))?;
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::credentials(format!(
            "environment variable {name} is empty"
        )));
    }
    Ok(value.to_owned())
}

/// Supplies [`Credentials`] at every token fetch.
///
/// The cache asks at each fetch, never caching the answer, so a rotated secret (environment,
/// mounted file, secrets manager) is used from the next fetch on, without a restart.
///
/// Implemented by [`Credentials`] (static), [`EnvCredentials`], [`FileCredentials`] and
/// [`CredentialsFn`] (any async closure, e.g. a secrets-manager client).
pub trait CredentialsProvider: Send + Sync + 'static {
    /// The credentials to use for the next token request.
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>>;
}

impl CredentialsProvider for Credentials {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let creds = self.clone();
        Box::pin(async move { Ok(creds) })
    }
}

impl<P: CredentialsProvider + ?Sized> CredentialsProvider for Arc<P> {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        (**self).credentials()
    }
}

/// Reads `OZZOBIT_API_KEY` / `OZZOBIT_API_SECRET` (or the vendor's `OZZOBiT_…` spelling) at
/// every token fetch.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EnvCredentials;

impl EnvCredentials {
    /// A provider reading the environment at each fetch.
    pub fn new() -> Self {
        Self
    }
}

impl CredentialsProvider for EnvCredentials {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async { Credentials::from_env() })
    }
}

/// Reads the API key and secret from two files at every token fetch: a mounted Kubernetes
/// secret, a Vault agent sink.
///
/// Surrounding whitespace (the trailing newline most tools write) is trimmed.
///
/// ```
/// use ozzobit_auth::FileCredentials;
///
/// let provider = FileCredentials::new(
///     "/var/run/secrets/ozzobit/api-key",
///     "/var/run/secrets/ozzobit/api-secret",
/// );
/// # let _ = provider;
/// ```
#[derive(Clone, Debug)]
pub struct FileCredentials {
    key_path: PathBuf,
    secret_path: PathBuf,
}

impl FileCredentials {
    /// A provider reading the key from `key_path` and the secret from `secret_path`.
    pub fn new(key_path: impl Into<PathBuf>, secret_path: impl Into<PathBuf>) -> Self {
        Self {
            key_path: key_path.into(),
            secret_path: secret_path.into(),
        }
    }
}

async fn read_trimmed(path: &Path) -> Result<String, Error> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        Error::credentials(format!("cannot read {}", path.display())).with_source(e)
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::credentials(format!("{} is empty", path.display())));
    }
    Ok(trimmed.to_owned())
}

impl CredentialsProvider for FileCredentials {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async move {
            let key = read_trimmed(&self.key_path).await?;
            let secret = read_trimmed(&self.secret_path).await?;
            Ok(Credentials::new(key, secret))
        })
    }
}

/// Credentials from an async closure, called at every token fetch: the hook for a secrets
/// manager (AWS Secrets Manager, Vault, …).
///
/// ```
/// use ozzobit_auth::{Credentials, CredentialsFn};
///
/// let provider = CredentialsFn::new(|| async {
///     // e.g. `secrets_client.get_secret_value("ozzobit").await`
///     Ok::<_, ozzobit_auth::Error>(Credentials::new("pk_live_123", "sk_live_456"))
/// });
/// # let _ = provider;
/// ```
pub struct CredentialsFn<F> {
    f: F,
}

impl<F> CredentialsFn<F> {
    /// Wraps `f`, called once per token fetch.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F> fmt::Debug for CredentialsFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsFn").finish_non_exhaustive()
    }
}

impl<F, Fut> CredentialsProvider for CredentialsFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credentials, Error>> + Send + 'static,
{
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin((self.f)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn debug_redacts_secret() {
        let c = Credentials::new("pk_1", "sk_canary_value");
        let dbg = format!("{c:?}");
        assert!(dbg.contains("pk_1"));
        assert!(dbg.contains("[REDACTED]"));
        assert!(!dbg.contains("sk_canary_value"));
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    #[test]
    fn env_prefers_upper_case_then_vendor_spelling() {
        let both = lookup(&[(ENV_API_KEY, "pk_upper"), (ENV_API_KEY_VENDOR, "pk_vendor")]);
        assert_eq!(
            read_var(&both, ENV_API_KEY, ENV_API_KEY_VENDOR).unwrap(),
            "pk_upper"
        );
        let vendor = lookup(&[(ENV_API_KEY_VENDOR, " pk_vendor\n")]);
        assert_eq!(
            read_var(&vendor, ENV_API_KEY, ENV_API_KEY_VENDOR).unwrap(),
            "pk_vendor"
        );
    }

    #[test]
    fn env_missing_or_empty_names_the_variable() {
        let none = lookup(&[]);
        let e = read_var(&none, ENV_API_SECRET, ENV_API_SECRET_VENDOR).unwrap_err();
        assert!(e.is_credentials());
        assert_eq!(
            e.to_string(),
            "credentials unavailable: environment variable OZZOBIT_API_SECRET is not set"
        );
        let empty = lookup(&[(ENV_API_SECRET_VENDOR, "  ")]);
        let e = read_var(&empty, ENV_API_SECRET, ENV_API_SECRET_VENDOR).unwrap_err();
        assert_eq!(
            e.to_string(),
            "credentials unavailable: environment variable OZZOBiT_API_SECRET is empty"
        );
    }

    #[tokio::test]
    async fn file_provider_rereads_and_trims() {
        let dir = std::env::temp_dir().join(format!("ozzobit-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, s) = (dir.join("key"), dir.join("secret"));
        std::fs::write(&k, "pk_1\n").unwrap();
        std::fs::write(&s, "sk_old\n").unwrap();
        let p = FileCredentials::new(&k, &s);
        let c = p.credentials().await.unwrap();
        assert_eq!(c.api_key(), "pk_1");
        assert_eq!(c.api_secret().expose_secret(), "sk_old");
        std::fs::write(&s, "sk_new").unwrap();
        let c = p.credentials().await.unwrap();
        assert_eq!(c.api_secret().expose_secret(), "sk_new");

        std::fs::write(&s, "  \n").unwrap();
        let e = p.credentials().await.unwrap_err();
        assert!(e.is_credentials());
        assert!(e.to_string().ends_with("secret is empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let p = FileCredentials::new("/nonexistent/ozzobit/key", "/nonexistent/ozzobit/secret");
        let e = p.credentials().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "credentials unavailable: cannot read /nonexistent/ozzobit/key"
        );
    }
}
