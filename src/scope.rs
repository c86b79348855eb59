//! Which origins get the token.

use http::Uri;
use http::uri::Scheme;

use crate::Error;

/// An origin: scheme, host and effective port, compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// `host:port`, and `host` alone when the port is the scheme's default: the authority
    /// spellings a request URI for this origin has, compared as one string on the hot path.
    spellings: Vec<String>,
}

impl Origin {
    /// The origin of an absolute `http`/`https` URI; `None` for anything else.
    pub(crate) fn of(uri: &Uri) -> Option<Self> {
        let https = is_https(uri.scheme()?)?;
        let host = uri.host()?.to_ascii_lowercase();
        let default_port = if https { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let mut spellings = vec![format!("{host}:{port}")];
        if port == default_port {
            spellings.push(host.clone());
        }
        Some(Self {
            https,
            port,
            host,
            spellings,
        })
    }

    /// Parses `scheme://host[:port]` as given to `allow_origin`. A trailing `/` is accepted; a
    /// path, query or user-info is not, so a typo cannot silently widen or narrow the scope.
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::config(format!("allow_origin({text:?}): {why}"));
        let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("user-info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("an origin has no path or query"));
        }
        Self::of(&uri).ok_or_else(|| bad("expected http://host[:port] or https://host[:port]"))
    }

    /// Whether `uri` (absolute) has this origin, without allocating.
    fn matches(&self, https: bool, host: &str, port: u16) -> bool {
        self.https == https && self.port == port && self.host.eq_ignore_ascii_case(host)
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn is_https(&self) -> bool {
        self.https
    }
}

fn is_https(scheme: &Scheme) -> Option<bool> {
    if *scheme == Scheme::HTTPS {
        Some(true)
    } else if *scheme == Scheme::HTTP {
        Some(false)
    } else {
        None
    }
}

/// The origins that receive the token: the base URL's and those added with `allow_origin`.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    origins: Vec<Origin>,
}

impl Scope {
    pub(crate) fn new(origins: Vec<Origin>) -> Self {
        Self { origins }
    }

    /// Whether a request to `uri` gets the token. A path-only URI (tonic, or a client that sets
    /// the authority later) is taken to go where the stack was built to send it: in scope. An
    /// authority without a scheme, or another scheme, is out.
    pub(crate) fn allows(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return uri.scheme().is_none();
        };
        let Some(https) = uri.scheme().and_then(is_https) else {
            return false;
        };
        // Hot path: the authority as written is one of an origin's spellings.
        let written = authority.as_str();
        if self.origins.iter().any(|o| {
            o.https == https && o.spellings.iter().any(|s| s.eq_ignore_ascii_case(written))
        }) {
            return true;
        }
        // Anything else (user-info, say) is parsed.
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host();
        self.origins.iter().any(|o| o.matches(https, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(origins: &[&str]) -> Scope {
        Scope::new(origins.iter().map(|o| Origin::parse(o).unwrap()).collect())
    }

    fn allows(s: &Scope, uri: &str) -> bool {
        s.allows(&uri.parse().unwrap())
    }

    #[test]
    fn same_origin_with_default_ports_and_case() {
        let s = scope(&["https://OZZOBiT.com"]);
        assert!(allows(&s, "https://ozzobit.com/api/api/v2/orders"));
        assert!(allows(&s, "https://OZZOBIT.COM:443/x"));
        assert!(!allows(&s, "http://ozzobit.com/x"));
        assert!(!allows(&s, "https://ozzobit.com:8443/x"));
        assert!(!allows(&s, "https://ozzobit.com.evil.example/x"));
        assert!(!allows(&s, "https://evil.example/?https://ozzobit.com"));
    }

    #[test]
    fn user_info_and_odd_spellings_take_the_parsed_path() {
        let s = scope(&["https://a.example"]);
        assert!(allows(&s, "https://user@a.example/x"));
        assert!(allows(&s, "https://A.EXAMPLE:443/x"));
        assert!(!allows(&s, "https://user@b.example/x"));
        assert!(!allows(&s, "https://a.example@b.example/x"));
    }

    #[test]
    fn path_only_is_in_scope_schemeless_authority_is_not() {
        let s = scope(&["https://a.example"]);
        assert!(allows(&s, "/pkg.Service/Method"));
        assert!(!allows(&s, "a.example:443"));
    }

    #[test]
    fn extra_origins_and_ipv6() {
        let s = scope(&["http://127.0.0.1:8080", "https://[::1]:9443/"]);
        assert!(allows(&s, "http://127.0.0.1:8080/orders"));
        assert!(!allows(&s, "http://127.0.0.1:8081/orders"));
        assert!(allows(&s, "https://[::1]:9443/orders"));
    }

    #[test]
    fn parse_rejects_paths_and_userinfo() {
        for bad in [
            "https://a.example/api",
            "https://u:p@a.example",
            "ftp://a.example",
            "a.example",
            "https://a.example?q=1",
        ] {
            let e = Origin::parse(bad).unwrap_err();
            assert!(e.is_config(), "{bad}");
            assert!(e.to_string().contains("allow_origin"), "{e}");
        }
    }
}
