//! Connection settings: flags > environment > profile file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use qk_client::http::ApiConfig;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A profile file (TOML). Relative paths are relative to the file.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Every node's API URL (fail-over when `addr` is unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Default `--threshold` for `qk key create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u16>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("addr", &self.addr)
            .field("nodes", &self.nodes)
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(t) = self.token.as_mut() {
            zeroize::Zeroize::zeroize(t);
        }
    }
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the profile {}", path.display()))?;
        let mut profile: Profile = toml::from_str(&text).with_context(|| {
            format!(
                "the profile {} is not valid TOML with addr, nodes, ca_cert, client_cert, client_key, token",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut profile.ca_cert,
            &mut profile.client_cert,
            &mut profile.client_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(profile)
    }
}

/// The connection flags (`None` when not given on the command line).
#[derive(Clone, Default)]
pub struct ConnFlags {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub profile: Option<PathBuf>,
}

/// Resolved connection settings.
#[derive(Clone, Default)]
pub struct Settings {
    pub urls: Vec<String>,
    pub token: Option<Zeroizing<String>>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub threshold: Option<u16>,
}

/// Which profile file applies: `--profile`/`QK_PROFILE`, else
/// `./.qk-dev/profile.toml` if present, else `~/.config/quorumkey/profile.toml`
/// if present.
pub fn profile_path(explicit: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    let dev = PathBuf::from(".qk-dev/profile.toml");
    if dev.exists() {
        return Some(dev);
    }
    home.map(|h| h.join(".config/quorumkey/profile.toml"))
        .filter(|p| p.exists())
}

/// Flags > environment (`env` looks a variable up) > profile.
pub fn resolve(
    flags: ConnFlags,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<PathBuf>,
) -> Result<Settings> {
    let env_path = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let explicit = flags.profile.clone().or_else(|| env_path("QK_PROFILE"));
    let profile_path = profile_path(explicit, home);
    let profile = match &profile_path {
        Some(p) => Profile::load(p)?,
        None => Profile::default(),
    };
    let addr = flags
        .addr
        .or_else(|| env("QK_ADDR").filter(|v| !v.is_empty()))
        .or_else(|| profile.addr.clone());
    let urls = match addr {
        Some(a) => url_list(&a, &profile.nodes),
        None => profile.nodes.clone(),
    };
    let token = flags
        .token
        .or_else(|| env("QK_TOKEN").filter(|v| !v.is_empty()))
        .or_else(|| profile.token.clone())
        .map(Zeroizing::new);
    Ok(Settings {
        urls,
        token,
        ca_cert: flags
            .ca_cert
            .or_else(|| env_path("QK_CA_CERT"))
            .or_else(|| profile.ca_cert.clone()),
        client_cert: flags
            .client_cert
            .or_else(|| env_path("QK_CLIENT_CERT"))
            .or_else(|| profile.client_cert.clone()),
        client_key: flags
            .client_key
            .or_else(|| env_path("QK_CLIENT_KEY"))
            .or_else(|| profile.client_key.clone()),
        threshold: profile.threshold,
    })
}

/// `addr` (comma-separated allowed) first, then the profile's other nodes.
fn url_list(addr: &str, nodes: &[String]) -> Vec<String> {
    let mut urls: Vec<String> = addr
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    for n in nodes {
        let n = n.trim_end_matches('/').to_string();
        if !urls.contains(&n) {
            urls.push(n);
        }
    }
    urls
}

impl Settings {
    fn ca_cert(&self) -> Result<PathBuf> {
        self.ca_cert.clone().context(
            "no cluster CA certificate; pass --ca-cert FILE (or QK_CA_CERT), or start a cluster with `qk dev up`",
        )
    }

    /// For unauthenticated probes (`qk cluster ready`): no credential.
    pub fn probe_config(&self, timeout_ms: u64) -> Result<ApiConfig> {
        Ok(ApiConfig {
            urls: self.urls.clone(),
            ca_cert: self.ca_cert()?,
            client_identity: None,
            token: None,
            timeout_ms,
        })
    }

    pub fn api_config(&self, timeout_ms: u64) -> Result<ApiConfig> {
        let ca_cert = self.ca_cert()?;
        let client_identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => anyhow::bail!("pass both --client-cert and --client-key, or neither"),
        };
        if client_identity.is_none() && self.token.is_none() {
            anyhow::bail!(
                "no credential; pass --client-cert/--client-key or --token (or set them in a profile)"
            );
        }
        Ok(ApiConfig {
            urls: self.urls.clone(),
            ca_cert,
            client_identity,
            token: self.token.clone(),
            timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write_profile(dir: &Path) -> PathBuf {
        let path = dir.join("profile.toml");
        std::fs::write(
            &path,
            "addr = \"https://profile:1\"\nnodes = [\"https://profile:1\", \"https://other:2\"]\n\
             ca_cert = \"pki/ca.pem\"\nclient_cert = \"/abs/c.pem\"\nclient_key = \"/abs/c.key\"\n\
             token = \"qkt.profile.secret\"\nthreshold = 2\n",
        )
        .unwrap_or_default();
        path
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_profile_fills_what_nothing_else_gives() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let flags = ConnFlags {
            profile: Some(write_profile(dir.path())),
            ..Default::default()
        };
        let s = resolve(flags, &env_of(&[]), None)?;
        assert_eq!(s.urls, ["https://profile:1", "https://other:2"]);
        assert_eq!(s.ca_cert, Some(dir.path().join("pki/ca.pem")));
        assert_eq!(s.client_cert, Some(PathBuf::from("/abs/c.pem")));
        assert_eq!(
            s.token.as_deref().map(String::as_str),
            Some("qkt.profile.secret")
        );
        assert_eq!(s.threshold, Some(2));
        Ok(())
    }

    #[test]
    fn environment_beats_profile_and_flags_beat_environment() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let env = env_of(&[
            (
                "QK_PROFILE",
                write_profile(dir.path()).to_str().unwrap_or(""),
            ),
            ("QK_ADDR", "https://env:1"),
            ("QK_TOKEN", "qkt.env.secret"),
            ("QK_CA_CERT", "/env/ca.pem"),
            ("QK_CLIENT_KEY", "/env/c.key"),
        ]);
        let s = resolve(ConnFlags::default(), &env, None)?;
        assert_eq!(
            s.urls,
            ["https://env:1", "https://profile:1", "https://other:2"]
        );
        assert_eq!(
            s.token.as_deref().map(String::as_str),
            Some("qkt.env.secret")
        );
        assert_eq!(s.ca_cert, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(s.client_key, Some(PathBuf::from("/env/c.key")));
        assert_eq!(s.client_cert, Some(PathBuf::from("/abs/c.pem")));

        let flags = ConnFlags {
            addr: Some("https://flag:1".into()),
            token: Some("qkt.flag.secret".into()),
            ca_cert: Some("/flag/ca.pem".into()),
            ..Default::default()
        };
        let s = resolve(flags, &env, None)?;
        assert_eq!(s.urls[0], "https://flag:1");
        assert_eq!(
            s.token.as_deref().map(String::as_str),
            Some("qkt.flag.secret")
        );
        assert_eq!(s.ca_cert, Some(PathBuf::from("/flag/ca.pem")));
        Ok(())
    }

    #[test]
    fn the_home_profile_is_used_when_present() -> Result<()> {
        let home = tempfile::tempdir()?;
        let dir = home.path().join(".config/quorumkey");
        std::fs::create_dir_all(&dir)?;
        write_profile(&dir);
        // No ./.qk-dev/profile.toml in the test's working directory (cli/).
        let s = resolve(ConnFlags::default(), &env_of(&[]), Some(home.path().into()))?;
        assert_eq!(s.urls[0], "https://profile:1");
        let none = resolve(ConnFlags::default(), &env_of(&[]), None)?;
        assert!(none.urls.is_empty() && none.ca_cert.is_none());
        Ok(())
    }

    #[test]
    fn a_missing_credential_says_what_to_pass() {
        let s = Settings {
            urls: vec!["https://x:1".into()],
            ca_cert: Some("/ca.pem".into()),
            ..Default::default()
        };
        let err = s
            .api_config(1000)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--client-cert"), "{err}");
    }
}
