//! The HTTP client commands use to call the app beside them (hooks, probes).

use std::sync::Once;
use std::time::Duration;

/// `url` as messages, logs and labels show it: its password replaced by `***`. Text that is
/// not a URL is shown as it is.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Makes rustls use `ring`; every reqwest client is built after this. Idempotent.
pub fn install_crypto_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only if another provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds every podkit HTTP client: rustls on the `ring` provider. The error names its cause:
/// reqwest's own says only "builder error", and the cause ("No CA certificates were loaded from
/// the system", in an image without CA roots) is what an operator can act on.
pub fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    builder.build().map_err(|e| format!("cannot build the HTTP client: {}", crate::error_chain(&e)))
}

/// A client with the platform's roots, for calls to the app beside podkit. `timeout` bounds
/// each whole request.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    build(
        reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("podkit/", env!("CARGO_PKG_VERSION")))
            // Hooks talk to the app on localhost; an HTTP(S)_PROXY meant for the app's own
            // egress must not capture them.
            .no_proxy(),
    )
}
